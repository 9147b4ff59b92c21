"""Pictures and widgets for the chapters (matplotlib / ipywidgets live here, never in model code)."""
