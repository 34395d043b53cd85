"""README's Python examples run as written, against the real local LLM server."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import llmbudget

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, llm_server, engine, monkeypatch, capsys, request):
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    if "anthropic" in code:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", request.getfixturevalue("messages_server"))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    shutil.rmtree("/tmp/llmbudget-readme", ignore_errors=True)
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    finally:
        llmbudget.uninstall()
        llmbudget.set_engine(engine)


def test_readme_budget_example_spends_and_reports(llm_server, engine, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    code = next(block for block in BLOCKS if "budget_refusal" in block)
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    finally:
        llmbudget.uninstall()
    calls, cost = capsys.readouterr().out.split()[-2:]
    assert calls == "1" and 0 < float(cost) < 0.05


def _slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    import re

    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_the_table_of_contents_lists_every_section_and_every_link_lands():
    import re

    text = README.read_text(encoding="utf-8")
    headings = [title for title in re.findall(r"^#{2,3} (.+)$", text, re.M) if title != "Contents"]
    contents = text[text.index("## Contents"):text.index("\n## ", text.index("## Contents") + 1)]
    links = re.findall(r"\[([^\]]+)\]\(#([^)]+)\)", contents)
    assert [title for title, _ in links] == headings
    assert all(anchor == _slug(title) for title, anchor in links)


TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("text", TOML_BLOCKS, ids=[f"toml{i}" for i in range(len(TOML_BLOCKS))])
def test_readme_policy_examples_load(text, tmp_path, monkeypatch, engine):
    """Every policy snippet loads as written (one named a tier its routing did not define)."""
    from llmbudget.config import Policy

    monkeypatch.setenv("GPU_BOX_KEY", "sk-test")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ("pyproject.toml" if "[tool.llmbudget" in text else "llmbudget.toml")
    path.write_text(text, encoding="utf-8")
    policy = Policy.from_file(path)
    ledger = getattr(policy.engine, "ledger", None)
    if ledger is not None and hasattr(ledger, "close"):
        ledger.close()
