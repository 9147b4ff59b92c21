"""gptlib: the GPT built in the Build a GPT course."""
