"""tools.citations: {footcite} roles become links and References a generated list, once."""
import json

import pytest

from tools import citations

BIB = citations.load_bib()


def _notebook(*markdown):
    return {"cells": [{"cell_type": "markdown", "id": f"c{i}", "metadata": {},
                       "source": text.splitlines(keepends=True)} for i, text in enumerate(markdown)],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


CHAPTER = _notebook(
    "# A chapter\n\nAttention {footcite}`vaswani2017attention` and recurrence "
    "{footcite}`elman1990finding, hochreiter1997lstm`.",
    "Again {footcite}`vaswani2017attention`.\n",
    "## References\n\n```{footbibliography}\n```")


def test_a_known_entry_renders_as_a_link_and_a_full_reference():
    entry = BIB["vaswani2017attention"]
    assert citations.citation(entry) == (
        '[Vaswani et al., 2017](https://arxiv.org/abs/1706.03762 "Attention Is All You Need")')
    assert citations.reference(entry) == (
        "Vaswani, A., Shazeer, N., Parmar, N., Uszkoreit, J., Jones, L., Gomez, A. N., Kaiser, L., "
        "and Polosukhin, I. (2017). [Attention Is All You Need](https://arxiv.org/abs/1706.03762). "
        "*Advances in Neural Information Processing Systems*.")
    two = BIB["hochreiter1997lstm"]     # two authors, a doi, accents-free; volume, number, pages
    assert citations.citation(two).startswith(
        "[Hochreiter and Schmidhuber, 1997](https://doi.org/10.1162/neco.1997.9.8.1735 ")
    assert "*Neural Computation*, 9(8), 1735–1780." in citations.reference(two)
    assert citations.short_authors(BIB["dao2022flashattention"]) == "Dao et al."
    assert "Ré, C." in citations.reference(BIB["dao2022flashattention"])    # R{\'e} composed


def test_roles_become_links_and_references_the_cited_entries():
    out = citations.rewrite_notebook(CHAPTER, BIB, "ch")
    text = ["".join(c["source"]) for c in out["cells"]]
    assert "{footcite}" not in "".join(text) and "footbibliography" not in "".join(text)
    assert ("recurrence ([Elman, 1990](https://doi.org/10.1207/s15516709cog1402_1 "
            '"Finding Structure in Time"); [Hochreiter and Schmidhuber, 1997](') in text[0]
    refs = text[2]
    assert refs.startswith("## References\n\n" + citations.BEGIN) and refs.endswith(citations.END)
    items = [line for line in refs.splitlines() if line.startswith("- ")]
    assert [i.split(",")[0] for i in items] == ["- Elman", "- Hochreiter", "- Vaswani"]  # each once, by author
    assert CHAPTER["cells"][0]["source"][0] == "# A chapter\n"      # the input is not changed


def test_a_second_run_changes_nothing_and_a_bib_fix_propagates():
    once = citations.rewrite_notebook(CHAPTER, BIB, "ch")
    assert citations.rewrite_notebook(once, BIB, "ch") == once
    moved = dict(BIB)
    entry = BIB["vaswani2017attention"]
    moved["vaswani2017attention"] = citations.Entry(entry.key, entry.kind,
                                                    {**entry.fields, "url": "https://example.org/x"},
                                                    entry.span)
    again = json.dumps(citations.rewrite_notebook(once, moved, "ch"))
    assert "https://arxiv.org/abs/1706.03762" not in again and again.count("https://example.org/x") == 3


def test_a_key_missing_from_the_bib_is_a_clear_error():
    nb = _notebook("See {footcite}`nobody2099paper`.", "## References\n\n```{footbibliography}\n```")
    with pytest.raises(citations.CitationError, match="'nobody2099paper' is not in book/references.bib"):
        citations.rewrite_notebook(nb, BIB, "ch")


def test_citations_need_a_references_section():
    with pytest.raises(citations.CitationError, match="no References list"):
        citations.rewrite_notebook(_notebook("See {footcite}`gage1994bpe`."), BIB, "ch")


def test_check_fails_while_a_role_is_left_and_passes_once_rewritten(tmp_path, capsys):
    path = tmp_path / "00_x.ipynb"
    path.write_text(citations.dumps(CHAPTER), encoding="utf-8")
    before = path.read_text(encoding="utf-8")
    assert citations.main(["--check", str(path)]) == 1
    assert path.read_text(encoding="utf-8") == before                    # --check writes nothing
    assert "out of date" in capsys.readouterr().out
    assert citations.main([str(path)]) == 0
    after = path.read_text(encoding="utf-8")
    assert after.endswith("}\n") and '\n "cells": [\n  {\n' in after   # indent 1, trailing newline
    assert citations.main(["--check", str(path)]) == 0
    bad = tmp_path / "01_y.ipynb"
    bad.write_text(citations.dumps(_notebook("{footcite}`nobody2099paper`", "## References\n")))
    assert citations.main(["--check", str(bad)]) == 2


def test_the_parser_reads_every_entry_of_the_bib():
    text = citations.BIB.read_text(encoding="utf-8")
    assert len(BIB) == text.count("\n@") + text.startswith("@")
    for entry in BIB.values():
        assert entry.get("title") and entry.get("year") and citations.short_authors(entry)
