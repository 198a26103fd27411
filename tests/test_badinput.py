"""Bad input, as a new user gives it: every mistake gets one line on stderr naming the file, option or variable
and what is wrong, exit status 2 (1 for a failure that is not the user's input), no traceback, and nothing
written or overwritten. First the defects found by trying (each reproduced), then one table of every command
and every kind of argument (docs/reliability.md, "Bad input"). In this process (Click's CliRunner): seconds."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hvdgan.cli import main
from hvdgan.dist import stop

TINY = ["--ngf", "8", "--ndf", "8", "--nz", "8", "--batch-size", "8", "--device", "cpu", "--no-tensorboard",
        "--sample-every", "1000", "--log-every", "1", "--threads", "1"]


def cli(*args, env=None, cwd=None):
    """`hvdgan ARGS` in this process. `train` sets the stop signals' handlers (and ignores them at its end):
    they are put back, so that nothing started later in this test session inherits them."""
    saved = {sig: signal.getsignal(sig) for sig in stop.SIGNALS}
    here = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        return CliRunner().invoke(main, [str(a) for a in args], env=env)
    finally:
        os.chdir(here)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def one_line(result, *words, code: int = 2) -> str:
    """The result is a refusal: `code`, one line on stderr (`Error: ...`) holding every one of `words`."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.output, result.exc_info)
    assert "Traceback" not in result.output and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert str(word) in lines[0], (word, lines[0])
    return lines[0]


def digest(*roots: Path) -> str:
    """The trees' paths, kinds, modes, sizes, mtimes and contents: equal before and after = nothing written."""
    h = hashlib.sha256()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                st = p.lstat()
                h.update(f"{p.relative_to(root)} {st.st_mode} {st.st_size} {st.st_mtime_ns}\n".encode())
                if p.is_file() and not p.is_symlink():
                    h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def checkpoint(digits, tmp_path_factory) -> Path:
    """A real checkpoint of a tiny real run (one step, in this process)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = cli("train", "--data", digits, "--out", out, *TINY, "--max-steps", "1")
    assert result.exit_code == 0, result.output
    return out / "checkpoints" / "ckpt-00000001.pt"


# ------------------------------------------------------------------------------------------ the defects
def test_16_bit_and_odd_image_modes_are_converted_or_refused(tmp_path):
    """16-bit grey PNGs were written all 255 without a word; transparency showed the hidden colour."""
    from PIL import Image

    from hvdgan.data import read_all

    grey = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64  # 0 .. 65472
    folder = tmp_path / "png16"
    folder.mkdir()
    Image.fromarray(grey).save(folder / "a.png")
    assert Image.open(folder / "a.png").mode in ("I;16", "I")  # (Pillow's mode for it differs by version)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[:16, :, 3] = 255, 255  # red on top, a transparent (black) half below
    Image.fromarray(rgba).save(folder / "b.png")
    Image.fromarray(rgba).convert("LA").save(folder / "c.png")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(folder / "d.jpg")  # red
    result = cli("prepare", folder, tmp_path / "d", "--no-shuffle", "--channels", "1")
    assert result.exit_code == 0, result.output
    images, _ = read_all(tmp_path / "d")
    assert np.abs(images[0, 0].astype(int) - np.round(grey / 257)).max() <= 1  # scaled, not clipped
    assert images[1, 0, 0, 0] == 76 and images[1, 0, -1, 0] == 255  # red's luma; transparent: white
    assert images[2, 0, -1, 0] == 255 and abs(int(images[3, 0, 0, 0]) - 76) <= 3
    floats = tmp_path / "float"
    floats.mkdir()
    Image.fromarray(np.ones((32, 32), np.float32)).save(floats / "f.tif")
    one_line(cli("prepare", floats, tmp_path / "e"), "f.tif", "mode F")
    assert not (tmp_path / "e").exists()


def test_train_out_that_is_a_file(digits, tmp_path):
    (tmp_path / "file").write_text("mine")
    before = digest(tmp_path)
    one_line(cli("train", "--data", digits, "--out", tmp_path / "file", *TINY, "--max-steps", "1"),
             tmp_path / "file", "not a directory")
    assert digest(tmp_path) == before


def test_sample_out_of_the_wrong_kind(checkpoint, tmp_path):
    (tmp_path / "file.png").write_text("mine")
    (tmp_path / "dir").mkdir()
    before = digest(tmp_path)
    one_line(cli("sample", checkpoint, "--single", "--out", tmp_path / "file.png"), "file.png", "not a directory")
    one_line(cli("sample", checkpoint, "--overwrite", "--out", tmp_path / "dir"), "dir", "is a directory")
    assert digest(tmp_path) == before


def test_a_failed_start_leaves_nothing_the_next_start_refuses(digits, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits, data)
    shard = sorted(data.glob("shard-*.h5"))[1]
    shard.rename(tmp_path / "kept.h5")
    out = tmp_path / "run"
    one_line(cli("train", "--data", data, "--out", out, *TINY, "--max-steps", "1"), shard.name, "missing")
    assert not out.exists()
    # a shard whose size is right but whose content is not fails when the epoch opens it, after the start:
    # the next start (with the data fixed) is not refused for the empty log it left
    (tmp_path / "kept.h5").rename(shard)
    header = shard.read_bytes()
    with open(shard, "r+b") as f:
        f.write(b"garbage!")
    started = cli("train", "--data", data, "--out", out, *TINY, "--max-steps", "1")
    assert started.exit_code == 2 and started.stderr.strip().splitlines()[-1].startswith(f"Error: {shard}")
    shard.write_bytes(header)
    result = cli("train", "--data", data, "--out", out, *TINY, "--max-steps", "1")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("hosts, words", [
    ("a:b:c", ["--hosts", "'a:b:c' is not HOST:SLOTS"]),
    (":2", ["--hosts", "':2' is not HOST:SLOTS"]),
    ("localhost:zero", ["--hosts", "'localhost:zero' is not HOST:SLOTS"]),
    ("localhost:2", ["--np 8", "more ranks than the 2 slots of --hosts localhost:2"]),
])
def test_launch_checks_hosts_and_slots_before_anything_starts(hosts, words):
    result = cli("launch", "--dry-run", "--np", "8", "--hosts", hosts, "jobs/digits-demo.yaml",
                 cwd=Path(__file__).resolve().parents[1])
    one_line(result, *words)
    assert result.stdout == ""  # no command line printed: nothing would start
