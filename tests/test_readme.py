"""The README's Python examples run as written, so they cannot drift; its commands exist."""

from __future__ import annotations

import re

from conftest import REPO, run_cli

README = (REPO / "README.md").read_text()


def test_readme_python_blocks_run(tmp_path, ray_session):
    blocks = [(m.start(1), m.group(1)) for m in re.finditer(r"```python\n(.*?)```", README, re.S)]
    assert blocks, "the README shows Python examples"
    namespace: dict = {}
    for start, block in blocks:
        padded = "\n" * README.count("\n", 0, start) + block  # tracebacks name README.md's own lines
        exec(compile(padded, "README.md", "exec"), namespace)  # noqa: S102 - our own README


def test_readme_cli_commands_are_real_commands():
    shell = "\n".join(re.findall(r"```sh\n(.*?)```", README, re.S))
    shown = re.findall(r"^lakeloop ([a-z]+)(?: ([a-z]+))?", shell, re.M)
    assert len(shown) >= 8
    for group, command in shown:
        args = [group, command, "--help"] if command else [group, "--help"]
        assert run_cli(*args).returncode == 0


def test_quick_start_is_the_two_make_targets():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
