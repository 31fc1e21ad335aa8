"""The README runs as written: every Python block and shell command, in order, in a temporary folder.

How README.md is read (fences only; prose is not run):

- ```python blocks run in order in one Python session, like a notebook: a block may use what an earlier block made.
- ```bash (or sh, shell) blocks: each command (one line; a trailing backslash continues it; ``&&`` chains) runs
  where it stands among the Python blocks. ``python``, ``python3`` and ``.venv/bin/python`` are this interpreter.
  ``train.py`` and ``ecgfast`` commands run in the same process (``train.main``, ``ecgfast.cli.main``) and must
  return 0; any other command runs as a subprocess and must exit 0. ``train.py`` commands get :data:`TINY` appended
  (argparse keeps the last value), so that the demo and pretraining run in seconds; nothing else is changed.
- Fences with another language, or none (printed output, tables), are not run.
- The folder is ``<tmp>/work`` beside a link ``<tmp>/shared`` to the checkout's ``../shared``, so ``../shared/data``
  and the paths the README creates (``runs/...``, ``data/...``) resolve as in a checkout; ``train.py`` is linked in.

Markers: an HTML comment on the line right before a fence says how to check a block that cannot run in CI.

- ``<!-- readme-test: gpu -->``: needs a CUDA GPU. A Python block runs where ``torch.cuda.is_available()``, and is
  checked as below elsewhere; shell commands (GPU-sized jobs) are always checked as below.
- ``<!-- readme-test: long -->``: takes too long for CI; always checked as below.
- ``<!-- readme-test: synopsis -->``: shows a command's form, with placeholders (``SRC``, ``STORE``,
  ``[--option]``); always checked as below.

Checked, not run: a Python block is compiled and its top-level imports are executed (so renamed modules and
functions fail); a command's program and subcommand (``train.py pretrain``, ``ecgfast ingest``; ``torchrun`` and its
own options dropped) are run with ``--help``, and every ``--option`` the command names must appear in that help.

The quickstart block (``<!-- quickstart -->``) is what ``.ci/run`` executes around this test (the install, the test
command); its ``train.py`` command must also be a command of another block, where it runs.

Every command of ``train.py``'s docstring must be a command of the README (so it is run, or checked, here).

Run as ``python tests/test_readme.py PLAN.json`` (from the work folder) this file is the driver that executes the
plan; pytest builds the plan and starts the driver in a subprocess.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKERS = ("gpu", "long", "synopsis")
# The size of every train.py command of the README in CI: two pretraining steps, one downstream run per arm.
TINY = ("--patients", "60", "--batch-size", "8", "--max-steps", "2", "--fractions", "1", "--downstream-epochs", "1",
        "--downstream-seeds", "1", "--downstream-max-steps", "1")
PYTHONS = ("python", "python3", ".venv/bin/python")


def blocks(text: str) -> list[dict]:
    """The fenced blocks of a Markdown text: language, first line number (1-based), code, marker, quickstart."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = lines[i - 1].strip() if i else ""
        marker = re.fullmatch(r"<!--\s*readme-test:\s*(\w+)\s*-->", before)
        if marker and marker.group(1) not in MARKERS:
            raise ValueError(f"README.md:{i}: unknown marker {marker.group(1)!r} (known: {', '.join(MARKERS)})")
        out.append({"lang": fence.group(1), "line": i + 2, "code": "\n".join(lines[i + 1:end]),
                    "marker": marker.group(1) if marker else None, "quickstart": before == "<!-- quickstart -->"})
        i = end + 1
    return out


def commands(code: str, first_line: int, synopsis: bool = False) -> list[tuple[int, list[str]]]:
    """The commands of a shell block as (line, words), comments dropped, continuations joined, ``&&`` split. In a
    synopsis an indented line continues the command above, as in a manual page."""
    joined: list[tuple[int, str]] = []
    for k, line in enumerate(code.splitlines()):
        above = joined[-1][1] if joined else ""
        if above.endswith("\\") or (synopsis and joined and line[:1].isspace()):
            joined[-1] = (joined[-1][0], above.removesuffix("\\") + " " + line)
        else:
            joined.append((first_line + k, line.rstrip()))
    out = []
    for start, line in joined:
        words = shlex.split(line, comments=True)
        while words:
            part = words[:words.index("&&")] if "&&" in words else words
            out.append((start, part))
            words = words[len(part) + 1:]
    return out


def is_train(words: list[str]) -> bool:
    return len(words) > 1 and words[0] in PYTHONS and Path(words[1]).name == "train.py"


def help_words(words: list[str]) -> list[str]:
    """The program and subcommand of a command: ``train.py pretrain``, ``ecgfast ingest`` (torchrun runs train.py)."""
    if words[0] == "torchrun":
        words = ["python"] + [w for w in words[1:] if not w.startswith("-")]
    lead = words[:2] if words[0] in PYTHONS else words[:1]
    rest = words[len(lead):]
    return lead + rest[:1] if rest and re.fullmatch(r"[a-z][a-z0-9_-]*", rest[0]) else lead


def options(words: list[str]) -> list[str]:
    """The --options a command names (torchrun's own excluded)."""
    if words[0] == "torchrun":
        words = words[next(i for i, w in enumerate(words) if w.endswith(".py")):]
    found = (re.match(r"\[?(--[a-z][\w-]*)", w) for w in words)
    return [m.group(1) for m in found if m]


def plan(readme: str) -> list[dict]:
    """What the driver does, in README order."""
    steps = []
    for block in blocks(readme):
        checked = block["marker"] is not None
        if block["lang"] == "python":
            checked = checked and not (block["marker"] == "gpu" and _cuda())
            steps.append({"line": block["line"], "kind": "python", "code": block["code"], "checked": checked})
        elif block["lang"] in ("bash", "sh", "shell"):
            for line, words in commands(block["code"], block["line"], synopsis=block["marker"] == "synopsis"):
                if block["quickstart"]:
                    continue  # .ci/run's (test_quickstart_demo_is_run_elsewhere checks the train.py part)
                steps.append({"line": line, "kind": "shell", "words": words, "checked": checked})
    return steps


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------------ the driver


class Driver:
    def __init__(self):
        self.namespace: dict = {"__name__": "__readme__"}
        self.modules: dict[str, object] = {}

    def program(self, words: list[str]):
        """An in-process main() for train.py and ecgfast commands (with their arguments), else None."""
        if is_train(words):
            path = Path(words[1]).resolve()
            if path not in self.modules:
                import importlib.util

                spec = importlib.util.spec_from_file_location(f"train_{len(self.modules)}", path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module  # dataclasses look their module up there
                spec.loader.exec_module(module)
                self.modules[path] = module
            return self.modules[path].main, words[2:]
        if words[0] == "ecgfast":
            from ecgfast.cli import main

            return main, words[1:]
        return None

    def run_command(self, words: list[str]) -> None:
        found = self.program(words)
        if found is not None:
            main, args = found
            if is_train(words):
                args = [*args, *TINY]
            print("+", *words, *(TINY if is_train(words) else ()), flush=True)
            status = main(args)
            assert status in (0, None), f"exit status {status}"
            return
        argv = [sys.executable, *words[1:]] if words[0] in PYTHONS else words
        print("+", " ".join(words), flush=True)
        subprocess.run(argv, check=True)

    def check_command(self, words: list[str]) -> None:
        lead = help_words(words)
        found = self.program(lead)
        print("+ (checked)", " ".join(lead), "--help", flush=True)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if found is not None:
                main, args = found
                try:
                    main([*args, "--help"])
                except SystemExit as stop:
                    assert stop.code in (0, None), f"--help exit status {stop.code}"
            else:
                argv = [sys.executable, *lead[1:]] if lead[0] in PYTHONS else lead
                print(subprocess.run([*argv, "--help"], check=True, capture_output=True, text=True).stdout)
        text = out.getvalue()
        missing = [o for o in options(words) if not re.search(re.escape(o) + r"(?![\w-])", text)]
        assert not missing, f"{' '.join(lead)} --help does not list {missing}"

    def run_python(self, code: str, line: int, checked: bool) -> None:
        compiled = compile(code, f"README.md:{line}", "exec")
        if checked:
            tree = ast.parse(code)
            imports = ast.Module([n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], [])
            compiled = compile(imports, f"README.md:{line} (imports)", "exec")
        exec(compiled, self.namespace)

    def run(self, steps: list[dict]) -> None:
        for step in steps:
            tic = time.perf_counter()
            what = f"README.md:{step['line']}"
            print(f"--- {what} ({step['kind']}{', checked' if step['checked'] else ''})", flush=True)
            try:
                if step["kind"] == "python":
                    self.run_python(step["code"], step["line"], step["checked"])
                elif step["checked"]:
                    self.check_command(step["words"])
                else:
                    self.run_command(step["words"])
            except BaseException:
                print(f"FAILED: {what}", flush=True)
                raise
            print(f"--- {what} done in {time.perf_counter() - tic:.1f} s", flush=True)


# ------------------------------------------------------------------------------------------------------ the tests


def test_readme_runs_as_written(tmp_path):
    steps = plan((ROOT / "README.md").read_text())
    assert any(s["kind"] == "python" and not s["checked"] for s in steps)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    (work / "train.py").symlink_to(ROOT / "train.py")
    (tmp_path / "plan.json").write_text(json.dumps(steps))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(tmp_path / "plan.json")], cwd=work,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout[-20000:] + "\n" + done.stderr[-20000:])


def test_docstring_commands_are_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ran = {" ".join(words) for block in blocks(readme) if block["lang"] == "bash" and not block["quickstart"]
           for _, words in commands(block["code"], block["line"])}
    doc = ast.get_docstring(ast.parse((ROOT / "train.py").read_text()))
    listed = [line.strip() for line in doc.splitlines() if re.match(r"\s{4}(python|torchrun|ecgfast) ", line)]
    assert listed
    for line in listed:
        words = " ".join(shlex.split(line, comments=True))
        assert words in ran, f"train.py's docstring command `{words}` is not a command of the README"


def test_quickstart_demo_is_run_elsewhere():
    readme = (ROOT / "README.md").read_text()
    quick = [words for block in blocks(readme) if block["quickstart"]
             for _, words in commands(block["code"], block["line"])]
    assert quick, "the README has no <!-- quickstart --> block"
    ran = [words[1:] for block in blocks(readme) if block["lang"] == "bash" and not block["quickstart"]
           and block["marker"] is None for _, words in commands(block["code"], block["line"]) if is_train(words)]
    for words in quick:
        if is_train(words):
            assert words[1:] in ran, f"the quickstart's `{' '.join(words)}` is run by no other README block"


def test_markers_and_commands_are_read_as_documented():
    text = "\n".join([
        "<!-- readme-test: synopsis -->", "```bash", "ecgfast ingest SRC DEST [--fs 500] \\", "    --split  # note",
        "```", "```", "output", "```", "<!-- quickstart -->", "```bash", "a && python train.py --seed 1", "```"])
    got = blocks(text)
    assert [(b["lang"], b["line"], b["marker"], b["quickstart"]) for b in got] == [
        ("bash", 3, "synopsis", False), ("", 7, None, False), ("bash", 11, None, True)]
    assert commands(got[0]["code"], 3) == [(3, ["ecgfast", "ingest", "SRC", "DEST", "[--fs", "500]", "--split"])]
    assert commands("a [--b]\n    [--c]\nd", 1, synopsis=True) == [(1, ["a", "[--b]", "[--c]"]), (3, ["d"])]
    assert commands("a\n    b", 1) == [(1, ["a"]), (2, ["b"])]
    assert commands(got[2]["code"], 11) == [(11, ["a"]), (11, ["python", "train.py", "--seed", "1"])]
    words = commands(got[0]["code"], 3)[0][1]
    assert help_words(words) == ["ecgfast", "ingest"] and options(words) == ["--fs", "--split"]
    torchrun = "torchrun --nproc_per_node=8 train.py pretrain --data STORE --preset paper".split()
    assert help_words(torchrun) == ["python", "train.py", "pretrain"]
    assert options(torchrun) == ["--data", "--preset"]
    assert help_words(["python", "train.py", "embed", "--data", "x"]) == ["python", "train.py", "embed"]
    assert help_words(["ecgfast", "ingest", "../shared/data/x", "runs/x.zarr"]) == ["ecgfast", "ingest"]


if __name__ == "__main__":
    Driver().run(json.loads(Path(sys.argv[1]).read_text()))
