"""Every command line that the documentation shows is parsed by the real CLI, and what it names exists.

Where commands are collected
  - README.md and docs/*.md: the lines of ```bash / ```sh / ```console blocks and of bare ``` blocks
    (a console block's commands start with `$ `; its other lines are printed output), joined over `\\`;
    lines that are only a comment are checked when they show a printed command line (they start with
    hvdgan or a launcher, e.g. the `# .venv/bin/horovodrun ...` output of `hvdgan launch --dry-run`);
    and inline code spans that start with `hvdgan `.
  - the comment lines of jobs/*.yaml, slurm/*.sh and schedulers/*, the Makefile's recipes ($(VENV) and $(NP) set to the
    Makefile's defaults), and the examples in the CLI's own help texts.

What counts as an hvdgan command, and how it is checked
  - `hvdgan ARGS`, `<path>/hvdgan ARGS`, and the hvdgan part of `horovodrun/mpirun/srun ... hvdgan ARGS` and
    `docker run ... hvdgan ARGS` (the part after the last word `hvdgan`): ARGS must parse with Click's
    `make_context` on the real `hvdgan.cli.main` group (resilient parsing off, nothing is run). Options
    after `--` of `hvdgan launch`, and `sbatch [OPTS] slurm/train.sh [JOB [OPTS...]]` (JOB defaults to the
    script's default), are parsed as the `hvdgan train --job JOB --resume auto OPTS` that the ranks run.
  - A *mention* (an inline span, or a code line that ends in `...`) may leave out arguments (a missing
    argument is not an error); anything it does give must parse.
  - A *synopsis* (it contains `[`, `|` between words, `...` inside, or a placeholder in capitals such as
    SOURCE, DIR, JOB, N) is not parsed: its subcommand must exist and every `--option` it names must be an
    option of that subcommand.
  - `--job JOB`, `hvdgan launch ... JOB` and sbatch's JOB: the job file exists (and loads: `--job` is
    loaded while parsing, so an unknown key fails too).
  - `hvdgan prepare SOURCE OUT`: SOURCE is `digits` (the one source known by name), or a path whose form
    says which source reads it: a folder (ends in `/`: an image folder or the extracted CIFAR-10), a
    CIFAR-10 python archive (`.tar.gz`, `.tgz`, `.tar`), or an array file (`.npy`, `.npz`). Any other
    bare word (`cifar10`) is an error. The paths are placeholders for the reader's files; they need not exist.
  - A job file's comments must show the `hvdgan prepare` that writes its `data:` at its `image_size`.
  - `hvdgan sample runs/NAME/checkpoints/ckpt-N.pt`: a job file writes to runs/NAME and writes step N.
  - `python benchmarks/X.py --opt`, `python tests/X.py`: the script exists and defines each option.
  - `make TARGET`: the Makefile has the target.
Separately, every repository path that the docs, the job files, the scripts and the packaging files name
(tests/..., scripts/..., jobs/..., slurm/..., schedulers/..., benchmarks/..., docs/..., patches/..., hvdgan/...py) and every
relative Markdown link exists.
"""

from __future__ import annotations

import glob
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import yaml

from hvdgan.cli import main as CLI
from hvdgan.errors import HvdganError

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
COMMENTED = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "jobs").glob("*.yaml"), *(ROOT / "slurm").glob("*.sh"),
                                                      *(ROOT / "schedulers").iterdir()])
LAUNCHERS = {"horovodrun", "mpirun", "srun"}
TRAIN_SH = "slurm/train.sh"
CODE_LANGS = {"", "bash", "sh", "shell", "console"}
NAMED_SOURCES = {"digits"}
SOURCE_FORMS = ("/", ".tar.gz", ".tgz", ".tar", ".npy", ".npz")
PLACEHOLDER = re.compile(r"(?<![\w/.=$-])[A-Z][A-Z0-9_]*[A-Z](?![\w/.-])")
SYSTEM_DIRS = ("/usr/", "/bin/", "/etc/", "/opt/", "/tmp/", "/dev/")


@dataclass
class Doc:
    where: str  # file:line
    text: str
    kind: str  # "line" | "mention"


# --------------------------------------------------------------------------------------- collecting
def _first_word(text: str) -> str:
    return Path(text.split()[0]).name if text.split() else ""


def _shows_command(text: str) -> bool:
    word = _first_word(text)
    return word in LAUNCHERS | {"hvdgan", "sbatch", "make", "docker"} or word.startswith("python")


def markdown_commands(rel: str) -> list[Doc]:
    out, fence, lines = [], None, (ROOT / rel).read_text().splitlines()
    i = 0
    while i < len(lines):
        line, start = lines[i], i + 1
        i += 1
        m = re.match(r"^\s*```(\w*)", line)
        if m:
            fence = None if fence is not None else m.group(1)
            continue
        if fence is None:
            for span in re.findall(r"`([^`]+)`", line):
                if span.startswith("hvdgan "):
                    out.append(Doc(f"{rel}:{start}", span, "mention"))
            continue
        if fence not in CODE_LANGS:
            continue
        while line.rstrip().endswith("\\") and i < len(lines):
            line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
        text = line.strip()
        if fence == "console" or fence == "":
            if text.startswith("$ "):
                out.append(Doc(f"{rel}:{start}", text[2:], "line"))
            elif _shows_command(text):  # printed output that is itself a command line
                out.append(Doc(f"{rel}:{start}", text, "line"))
        elif text.startswith("#"):
            shown = text.lstrip("#").strip()
            if not text.startswith("#SBATCH") and shown and _shows_command(shown):
                out.append(Doc(f"{rel}:{start}", shown, "line"))
        elif text:
            out.append(Doc(f"{rel}:{start}", text, "line"))
    return out


def comment_commands(rel: str) -> list[Doc]:
    out = []
    for n, line in enumerate((ROOT / rel).read_text().splitlines(), 1):
        if line.startswith("#") and not line.startswith(("#!", "#SBATCH", "##SBATCH")):
            text = line.lstrip("#").strip()
            if text and _shows_command(text.replace("mkdir -p logs && ", "")):
                out.append(Doc(f"{rel}:{n}", text, "line"))
            for span in re.findall(r"`([^`]+)`", line):
                if span.startswith("hvdgan "):
                    out.append(Doc(f"{rel}:{n}", span, "mention"))
    return out


def makefile_commands() -> list[Doc]:
    text = (ROOT / "Makefile").read_text()
    values = dict(re.findall(r"^(\w+) \?= ?(.*)$", text, re.M))
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("\t"):
            line = re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)), line.strip().lstrip("@"))
            if _shows_command(line):
                out.append(Doc(f"Makefile:{n}", line, "line"))
    return out


def help_commands() -> list[Doc]:
    out = []

    def walk(cmd, path):
        for line in (cmd.help or "").splitlines():
            for part in re.split(r"\s{3,}", line.strip()):  # "Launch as:  a      b" holds two examples
                part = re.sub(r"^[\w ]+:\s+", "", part)
                if _shows_command(part):
                    out.append(Doc(f"hvdgan {' '.join(path)} --help".replace("  ", " "), part, "line"))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(CLI, [])
    return out


def all_commands() -> list[Doc]:
    docs = [d for rel in MARKDOWN for d in markdown_commands(rel)]
    docs += [d for rel in COMMENTED for d in comment_commands(rel)]
    return docs + makefile_commands() + help_commands()


# ------------------------------------------------------------------------------------------ checking
def is_synopsis(words: list[str]) -> bool:
    """Synopsis marks in the words given to hvdgan (a launcher's own words, such as `-x PATH`, do not count)."""
    body = " ".join(words)
    return ("[" in body or "..." in body or re.search(r"\w\|\w", body) is not None
            or PLACEHOLDER.search(body) is not None)


def command_of(path: list[str]):
    cmd = CLI
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def parse(args: list[str], mention: bool = False) -> tuple[list[str], dict]:
    """Parse `hvdgan ARGS` like the console script would, without running anything; returns the command
    path and its parameters. A Click error is raised as is."""
    ctx = CLI.make_context("hvdgan", list(args), resilient_parsing=False)
    path, cmd = [], CLI
    while isinstance(cmd, click.Group):
        rest = [*(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])), *ctx.args]
        if not rest:
            raise click.UsageError("no command given")
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        path.append(name)
        try:
            ctx = cmd.make_context(name, rest, parent=ctx, resilient_parsing=False)
        except click.MissingParameter:
            if not mention:
                raise
            return path, {}
    return path, dict(ctx.params)


def check_synopsis(text: str) -> None:
    words = text.split()
    words = words[words.index("hvdgan") + 1:] if "hvdgan" in words else words
    path, cmd = [], CLI
    while isinstance(cmd, click.Group) and words and words[0] in cmd.commands:
        path.append(words[0])
        cmd = cmd.commands[words.pop(0)]
    assert not isinstance(cmd, click.Group), f"no such hvdgan command: {' '.join(path + words[:1])}"
    known = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]} | {"--help", "-h"}
    for opt in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", " ".join(words)):
        assert opt in known, f"hvdgan {' '.join(path)} has no option {opt}"


def check_hvdgan(args: list[str], mention: bool = False) -> None:
    try:
        path, params = parse(args, mention)
    except click.exceptions.Exit as exc:  # --help / --version: parsed, printed and exited
        assert exc.exit_code == 0
        return
    except click.ClickException as exc:
        raise AssertionError(f"hvdgan {shlex.join(args)}: {exc.format_message()}") from None
    except HvdganError as exc:  # (a job file that --job reads while the options are parsed)
        raise AssertionError(f"hvdgan {shlex.join(args)}: {exc.message}") from None
    if not params:
        return
    if path == ["prepare"]:
        source = params["source"]
        assert source in NAMED_SOURCES or source.endswith(SOURCE_FORMS), (
            f"hvdgan prepare {source}: no source is called {source!r}; SOURCE is one of {sorted(NAMED_SOURCES)} or a "
            f"path ending in one of {SOURCE_FORMS}")
    if path == ["launch"]:
        assert (ROOT / params["job"]).is_file(), f"job file {params['job']} does not exist"
        extra = [a for a in params["extra"] if a != "--"]
        check_hvdgan(["train", "--job", params["job"], *extra])
    if path == ["sample"]:
        m = re.match(r"(runs/[^/]+)/checkpoints/ckpt-(\d+)\.pt$", params["checkpoint"])
        if m:
            jobs = [job_file(p) for p in glob.glob(str(ROOT / "jobs" / "*.yaml"))]
            writers = [j for j in jobs if j.get("out") == m.group(1)]
            assert writers, f"no job file writes to {m.group(1)}"
            step, job = int(m.group(2)), writers[0]
            assert step <= job["max_steps"] and (step % job["checkpoint_every"] == 0 or step == job["max_steps"]), (
                f"{job['out']} never writes a checkpoint at step {step}")


def job_file(path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def check(doc: Doc) -> None:
    text = doc.text
    try:
        words = shlex.split(text, comments=True)
    except ValueError as exc:
        raise AssertionError(f"cannot split: {exc}") from None
    mention = doc.kind == "mention" or (words[-1:] == ["..."])  # `hvdgan train ...`: elided options
    if words[-1:] == ["..."]:
        words = words[:-1]
    local = [w for w in words if w.startswith("/") and not w.startswith(SYSTEM_DIRS)]
    assert not local, f"paths of one machine: {local} (show them relative to the repository, e.g. .venv/bin/hvdgan)"
    segments, cur = [], []
    for w in words:
        if w in ("&&", ";", "|", "||"):
            segments.append(cur)
            cur = []
        else:
            cur.append(w)
    segments.append(cur)
    for seg in filter(None, segments):
        first = Path(seg[0]).name
        if first == "docker" and seg[1:2] == ["build"]:
            continue  # `-t hvdgan`: the image's name
        if first == "make":
            for target in [w for w in seg[1:] if "=" not in w]:  # (VAR=VALUE words are variables)
                assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M), (
                    f"the Makefile has no target {target}")
            continue
        if first.startswith("python"):
            script = next((w for w in seg[1:] if w.endswith(".py")), None)
            if script:
                assert (ROOT / script).is_file(), f"{script} does not exist"
                source = (ROOT / script).read_text()
                for opt in (w.split("=")[0] for w in seg if w.startswith("--")):
                    assert f'"{opt}"' in source, f"{script} has no option {opt}"
            continue
        if first == "sbatch":
            scripts = [i for i, w in enumerate(seg) if w.endswith(".sh")]
            assert scripts, "sbatch without a script"
            i = scripts[0]
            assert (ROOT / seg[i]).is_file(), f"{seg[i]} does not exist"
            if is_synopsis(seg[i + 1:]):
                continue
            assert seg[i] == TRAIN_SH, f"unknown batch script {seg[i]}"
            rest = seg[i + 1:]
            job, extra = (rest[0], rest[1:]) if rest else (default_job(), [])
            assert (ROOT / job).is_file(), f"job file {job} does not exist"
            check_hvdgan(["train", "--job", job, "--resume", "auto", *extra])
            continue
        at = [k for k, w in enumerate(seg) if Path(w).name == "hvdgan"]
        if not at:
            continue  # not an hvdgan command (srun --mpi=list, mkdir, tail, scancel, ...)
        if first not in LAUNCHERS | {"hvdgan", "docker"}:
            continue
        args = seg[at[-1] + 1:]
        if is_synopsis(args):
            check_synopsis("hvdgan " + " ".join(args))
        else:
            check_hvdgan(args, mention)


def default_job() -> str:
    m = re.search(r"^JOB=\$\{1:-([^}]+)\}", (ROOT / TRAIN_SH).read_text(), re.M)
    assert m, f"{TRAIN_SH}: no default job (JOB=${{1:-...}})"
    return m.group(1)


COMMANDS = all_commands()


def test_commands_are_collected_from_every_place():
    places = {d.where.split(":")[0].split(" --help")[0] for d in COMMANDS}
    assert {"README.md", "docs/cluster.md", "docs/data-format.md", "docs/placement.md", "docs/benchmarks.md",
            "Makefile", TRAIN_SH, *(f"jobs/{p.name}" for p in (ROOT / "jobs").glob("*.yaml"))} <= places
    assert any(d.where.startswith("hvdgan") for d in COMMANDS)
    assert sum(d.kind == "line" for d in COMMANDS) >= 40


@pytest.mark.parametrize("doc", COMMANDS, ids=[f"{d.where}:{d.text[:40]}" for d in COMMANDS])
def test_documented_command_parses(doc):
    try:
        check(doc)
    except AssertionError as exc:
        pytest.fail(f"{doc.where}: `{doc.text}`: {exc}", pytrace=False)


@pytest.mark.parametrize("job", sorted(p.name for p in (ROOT / "jobs").glob("*.yaml")))
def test_job_file_says_how_to_prepare_its_data(job):
    """The comment of a job file shows the `hvdgan prepare` that writes its data at its image size."""
    cfg = job_file(ROOT / "jobs" / job)
    prepares = []
    for doc in comment_commands(f"jobs/{job}"):
        words = shlex.split(doc.text, comments=True)
        if doc.kind == "line" and words[:2] == ["hvdgan", "prepare"]:
            prepares.append(parse(words[1:])[1])
    assert prepares, f"jobs/{job}: no `hvdgan prepare` line in its comments"
    made = [p for p in prepares if p["out"] == cfg["data"]]
    assert made, f"jobs/{job}: data {cfg['data']} is not the OUT of any prepare line ({[p['out'] for p in prepares]})"
    assert all((p["size"] or 32) == cfg["image_size"] for p in made), (
        f"jobs/{job}: prepare writes {[p['size'] or 32 for p in made]}, the job trains at {cfg['image_size']}")


# ----------------------------------------------------------------------------------- named paths exist
PATH_FILES = ["README.md", "setup.cfg", "pyproject.toml", "Makefile", "Dockerfile", *MARKDOWN[1:], *COMMENTED,
              *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").iterdir() if p.is_file()),
              *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.py"))]
REPO_PATH = re.compile(r"(?<![\w./-])((?:tests|scripts|slurm|schedulers|jobs|benchmarks|docs|patches|hvdgan)/[\w./-]*\w"
                       r"\.(?:py|sh|yaml|md|env|patch|cfg))\b")


def test_named_repository_paths_exist():
    missing = []
    for rel in dict.fromkeys(PATH_FILES):
        for n, line in enumerate((ROOT / rel).read_text().splitlines(), 1):
            names = set(REPO_PATH.findall(line))
            if rel.endswith(".md"):
                names |= {link.split("#")[0] for link in re.findall(r"\]\(([^)]+)\)", line)
                          if not re.match(r"\w+:", link) and link.split("#")[0]}
                base = (ROOT / rel).parent
            else:
                base = ROOT
            for name in names:
                if not ((base / name).exists() or (ROOT / name).exists()):
                    missing.append(f"{rel}:{n}: {name}")
    assert not missing, "named files that do not exist:\n" + "\n".join(missing)


# ------------------------------------------------------------------------ what the docs say commands do
def dry_run_pairs() -> list[tuple[str, list[str], str]]:
    """(where, `hvdgan launch ... --dry-run` args, the line the docs print after it)."""
    pairs = []
    for rel in MARKDOWN:
        docs = [d for d in markdown_commands(rel) if d.kind == "line"]
        for a, b in zip(docs, docs[1:]):
            words = shlex.split(a.text, comments=True)
            if words[:2] == ["hvdgan", "launch"] and "--dry-run" in words and "hvdgan" in b.text.split()[-1:] + [
                    Path(w).name for w in b.text.split()] and not b.text.startswith("hvdgan"):
                pairs.append((a.where, words[1:], b.text))
    return pairs


@pytest.mark.parametrize("where,args,shown", dry_run_pairs(), ids=[p[0] for p in dry_run_pairs()])
def test_dry_run_prints_what_the_docs_show(where, args, shown, monkeypatch):
    """The printed launcher line equals `hvdgan launch --dry-run`'s, with the venv shown as .venv/bin and
    `...` for the -x list of one's own environment; with only PATH set, as the docs assume."""
    import os
    import sys

    from click.testing import CliRunner

    for name in list(os.environ):
        if name != "PATH":
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(CLI, args)
    assert result.exit_code == 0, result.output
    printed = result.output.strip().replace(str(Path(sys.executable).parent) + "/", ".venv/bin/")
    shown = " ".join(shlex.split(shown, comments=True))
    printed = " ".join(shlex.split(printed))
    if os.geteuid() != 0:  # the docs are written as root (in the container); mpirun adds it only then
        shown = shown.replace(" --allow-run-as-root", "")
    pattern = "".join(r"(?:\s+\S+)*?" if w == "..." else r"\s+" + re.escape(w) for w in shown.split())
    assert re.fullmatch(pattern, " " + printed), f"{where}: the docs show\n  {shown}\nhvdgan launch prints\n  {printed}"


def job_excerpts() -> list[tuple[str, str, dict]]:
    out = []
    for rel in MARKDOWN:
        for m in re.finditer(r"```yaml\n# (jobs/[\w.-]+\.yaml) \(excerpt\)\n(.*?)```", (ROOT / rel).read_text(), re.S):
            out.append((rel, m.group(1), yaml.safe_load(m.group(2))))
    return out


@pytest.mark.parametrize("rel,job,excerpt", job_excerpts(), ids=[f"{e[0]}:{e[1]}" for e in job_excerpts()])
def test_job_excerpts_quote_the_file(rel, job, excerpt):
    cfg = job_file(ROOT / job)
    wrong = {k: (v, cfg.get(k)) for k, v in excerpt.items() if cfg.get(k) != v}
    assert not wrong, f"{rel} quotes {job} with other values (shown, file): {wrong}"


def shard_claims() -> list[tuple[str, list[str], int]]:
    """Documented `hvdgan prepare digits ...` lines whose comment says how many shards they write."""
    out = []
    for rel in MARKDOWN:
        for d in markdown_commands(rel):
            m = re.search(r"#.*?\b(\d+) shards", d.text)
            words = shlex.split(d.text, comments=True)
            if m and words[:3] == ["hvdgan", "prepare", "digits"]:
                out.append((d.where, words[3:], int(m.group(1))))
    return out


@pytest.mark.parametrize("where,args,shards", shard_claims(), ids=[c[0] for c in shard_claims()])
def test_prepare_writes_the_shards_the_docs_say(where, args, shards, tmp_path):
    """Run the documented `hvdgan prepare digits` (into a temporary OUT) and count the shards."""
    import json
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", "from hvdgan.cli import main; main()", "prepare", "digits", str(out),
                           *args[1:]], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = len(json.loads((out / "manifest.json").read_text())["shards"])
    assert written == shards, f"{where}: the docs say {shards} shards, `hvdgan prepare digits` writes {written}"


# ------------------------------------------------------------------------------- one owner per fact
SAMPLE_ENV = ["HOROVOD_CYCLE_TIME", "NCCL_DEBUG", "HVDGAN_TRAIN_SEED", "HDF5_USE_FILE_LOCKING", "OMP_NUM_THREADS",
              "PYTHONPATH", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES", "PATH", "LD_LIBRARY_PATH", "PATHEXT",
              "LD_LIBRARY_PATH_OLD", "HOME", "SLURM_JOB_ID", "OMPI_MCA_btl", "MY_PATH", "XHOROVOD_"]


def test_train_sh_exports_what_launch_py_lists():
    """hvdgan.dist.launch.EXPORT_PREFIXES / EXPORT_NAMES are the list; slurm/train.sh must repeat it (bash): its
    grep pattern has the same alternatives and, run by grep itself, selects the same names."""
    import subprocess

    from hvdgan.dist.launch import EXPORT_NAMES, EXPORT_PREFIXES, exported_names

    m = re.search(r"grep -E '(\^\(([^)']*)\))'", (ROOT / TRAIN_SH).read_text())
    assert m, f"{TRAIN_SH}: no `grep -E '^(...)'` selecting the variables mpirun exports"
    alternatives = m.group(2).split("|")
    assert sorted(a for a in alternatives if not a.endswith("$")) == sorted(EXPORT_PREFIXES), TRAIN_SH
    assert sorted(a[:-1] for a in alternatives if a.endswith("$")) == sorted(EXPORT_NAMES), TRAIN_SH
    grep = subprocess.run(["grep", "-E", m.group(1)], input="\n".join(SAMPLE_ENV) + "\n", capture_output=True,
                          text=True)
    assert sorted(grep.stdout.split()) == exported_names(dict.fromkeys(SAMPLE_ENV, "1"))


def test_docs_list_the_exported_variables_of_launch_py():
    """docs/cluster.md's `-x NAME` bullet names exactly EXPORT_PREFIXES (as `X*`) and EXPORT_NAMES."""
    from hvdgan.dist.launch import EXPORT_NAMES, EXPORT_PREFIXES

    text = (ROOT / "docs" / "cluster.md").read_text()
    m = re.search(r"`-x NAME` for every (.*?) set when you run it", text, re.S)
    assert m, "docs/cluster.md: no `-x NAME` for every ... sentence"
    spans = re.findall(r"`([^`]+)`", m.group(1))
    assert sorted(s[:-1] for s in spans if s.endswith("*")) == sorted(EXPORT_PREFIXES)
    assert sorted(s for s in spans if not s.endswith("*")) == sorted(EXPORT_NAMES)
    for rel in MARKDOWN:  # and nobody else keeps a second copy of the list
        if rel != "docs/cluster.md":
            listed = re.findall(r"`(HOROVOD_\*|NCCL_\*)`", (ROOT / rel).read_text())
            assert len(listed) < 2, f"{rel} lists the exported variables again: refer to docs/cluster.md"


def test_readme_layout_table_matches_the_package():
    """Every module of hvdgan/ is named in the README's layout table (a package row names its modules as
    `name` (concern)), every module the table names exists,
    and no module is over ~400 lines (one concern a module)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(hvdgan/[\w/]+\.py)`", table))
    for folder in re.findall(r"`(hvdgan/\w+)/`", table):  # a package row: `hvdgan/data/` with its modules
        row = next(line for line in table.splitlines() if f"`{folder}/`" in line)
        named |= {f"{folder}/{m}.py" for m in re.findall(r"`(\w+)` \(", row.split("|")[2])}
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "hvdgan").rglob("*.py") if p.name != "__init__.py"}
    assert modules - named == set(), "modules missing from the README's layout table"
    assert named - modules == set(), "the README's layout table names modules that do not exist"
    long = {m: n for m in modules if (n := len((ROOT / m).read_text().splitlines())) > 420}
    assert not long, f"modules over ~400 lines: {long}"


def test_the_kubernetes_launcher_line_parses(tmp_path, monkeypatch):
    """schedulers/mpijob.yaml is documented only (no Kubernetes here): its launcher's command is the
    `hvdgan launch` line that would run, with the MPI Operator's hostfile and the image's job path."""
    from click.testing import CliRunner

    job = yaml.safe_load((ROOT / "schedulers" / "mpijob.yaml").read_text())["spec"]
    spec = job["mpiReplicaSpecs"]
    command = spec["Launcher"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["hvdgan", "launch"]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("hvdgan-digits-worker-0 slots=1\nhvdgan-digits-worker-1 slots=1\n")
    args = [str(hostfile) if a == "/etc/mpi/hostfile" else a.replace("/opt/hvdgan/", "") for a in command[1:]]
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(CLI, [args[0], "--dry-run", *args[1:]])
    assert result.exit_code == 0, result.output
    assert int(command[command.index("--np") + 1]) == spec["Worker"]["replicas"] * job["slotsPerWorker"]
    assert "--resume auto" in result.output
