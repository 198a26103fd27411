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


def one_line(result, *words, code: int = 2, listing: bool = False) -> str:
    """The result is a refusal: `code`, one line on stderr (`Error: ...`) holding every one of `words`.
    `listing`: `data check` lists every problem it found first, one line each (`error: ...`)."""
    lines = result.stderr.strip().splitlines()
    if listing:
        assert lines[:-1] and all(line.startswith("error: ") for line in lines[:-1]), result.stderr
        lines = lines[-1:]
    assert result.exit_code == code, (result.exit_code, result.output, result.exc_info)
    assert "Traceback" not in result.output and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert str(word) in lines[0], (word, lines[0])
    return lines[0]


def digest(*roots: Path) -> str:
    """The trees' paths, kinds, modes, sizes, mtimes and contents: equal before and after = nothing written.
    A run directory's lock file is the one exception: every start that reaches it writes its name there."""
    h = hashlib.sha256()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                if name == ".hvdgan.lock":
                    h.update(f"{p.relative_to(root)}\n".encode())
                    continue
                st = p.lstat()
                h.update(f"{p.relative_to(root)} {st.st_mode} {st.st_size} {st.st_mtime_ns}\n".encode())
                if p.is_file() and not p.is_symlink() and os.access(p, os.R_OK):
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
    palette = Image.fromarray((np.arange(32)[:, None] >= 16).repeat(32, 1).astype(np.uint8))  # 0 above, 1 below
    palette = palette.convert("P")
    palette.putpalette([255, 0, 0, 0, 0, 0])
    palette.save(folder / "e.png", transparency=1)  # red above, a transparent (black) colour below
    Image.fromarray(grey.astype(np.int32)).save(folder / "f.tif")  # mode I: 32-bit integers, 16-bit values
    result = cli("prepare", folder, tmp_path / "d", "--no-shuffle", "--channels", "1")
    assert result.exit_code == 0, result.output
    images, _ = read_all(tmp_path / "d")
    assert np.abs(images[0, 0].astype(int) - np.round(grey / 257)).max() <= 1  # scaled, not clipped
    assert images[1, 0, 0, 0] == 76 and images[1, 0, -1, 0] == 255  # red's luma; transparent: white
    assert images[2, 0, -1, 0] == 255 and abs(int(images[3, 0, 0, 0]) - 76) <= 3
    assert Image.open(folder / "e.png").mode == "P" and (images[4, 0, 0, 0], images[4, 0, -1, 0]) == (76, 255)
    assert Image.open(folder / "f.tif").mode == "I" and np.array_equal(images[5], images[0])
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


def test_another_architecture_names_what_differs_even_a_key_only_the_checkpoint_has():
    from hvdgan.errors import HvdganError
    from hvdgan.models.zoo import architecture, build_networks
    from hvdgan.run.checkpoint import check_architecture

    resnet = {name: architecture(net) for name, net in zip("GD", build_networks("resnet", 8, 8, 8, 1, 32, False, 0))}
    dcgan = {name: architecture(net) for name, net in zip("GD", build_networks("dcgan", 8, 8, 8, 1, 32, False, 0))}
    with pytest.raises(HvdganError, match=r"another G architecture \(model: checkpoint 'resnet' vs now 'dcgan'"):
        check_architecture("ckpt.pt", resnet, dcgan)


def test_job_files_take_floats_as_users_write_them(tmp_path):
    from hvdgan.config import load_job_file

    job = tmp_path / "job.yaml"
    job.write_text("lr_g: 1e-4\nlr_d: 2E-4\nbeta2: .99\nr1: 1\nseed: 7\n")
    assert load_job_file(job) == {"lr_g": 1e-4, "lr_d": 2e-4, "beta2": 0.99, "r1": 1.0, "seed": 7}


def test_a_misspelt_job_key_is_named_with_the_closest_ones(tmp_path):
    from hvdgan.config import load_job_file
    from hvdgan.errors import HvdganError

    job = tmp_path / "job.yaml"
    job.write_text("lrg: 1e-4\n")  # (no option starts with "lrg": the hint was missing)
    with pytest.raises(HvdganError, match=r"job.yaml: unknown key 'lrg' \(did you mean lr_g\?\)$"):
        load_job_file(job)


def test_a_misspelt_variable_is_named_with_the_closest_one(tmp_path):
    result = cli("train", "--data", tmp_path / "nowhere", env={"HVDGAN_TRAIN_BACTH_SIZE": "8"})
    warning, error = result.stderr.strip().splitlines()
    assert warning == ("warning: HVDGAN_TRAIN_BACTH_SIZE is not a variable of hvdgan (ignored); did you mean "
                       "HVDGAN_TRAIN_BATCH_SIZE?")
    assert result.exit_code == 2 and error.startswith("Error: ") and "nowhere" in error


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
def test_the_stall_timeout_variable_is_a_number_of_seconds(value, monkeypatch):
    from hvdgan.dist import watchdog
    from hvdgan.errors import HvdganError

    monkeypatch.setenv("HVDGAN_STALL_TIMEOUT", value)
    with pytest.raises(HvdganError, match=f"^HVDGAN_STALL_TIMEOUT='{value}': "):
        watchdog.timeout()


def test_evaluate_says_how_long_it_will_take(caplog):
    """On 2 CPU cores `evaluate --num 1000` ran minutes without a word: after the first batch, the expected time."""
    import logging
    import time

    from hvdgan.eval.features import Expected

    expected = Expected(1000, "generated (rank 0's 1000 of 1000)", enabled=True)
    with caplog.at_level(logging.INFO, logger="hvdgan"):
        expected.update(10)  # (a first batch, fast: no word yet)
        expected.t0 = time.perf_counter() - 10.0  # (the first 20 images took 10 s)
        expected.update(10)
        expected.update(10)  # (once)
    assert [r.getMessage() for r in caplog.records] == ["generated (rank 0's 1000 of 1000): about 8 min 10 s more, "
                                                        "at 2.0 images/s"]


def test_the_console_script_says_it_the_same_way(tmp_path):
    """The table runs in this process; the installed `hvdgan` gives the same one line and status."""
    from conftest import ROOT, hvdgan

    proc = hvdgan("launch", "--np", "8", "--hosts", "localhost:2", "jobs/digits-demo.yaml", cwd=ROOT, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2, "", "Error: --np 8: more ranks than the 2 slots of --hosts localhost:2 (give --np 2 or fewer, or more "
               "hosts or slots)\n")


# ------------------------------------------------------------------------------------------- the matrix
@pytest.fixture(scope="module")
def ws(digits, checkpoint, tmp_path_factory) -> Path:
    """A working directory holding one of every kind of bad input (the table's paths are relative to it)."""
    import h5py
    import torch
    from PIL import Image

    w = tmp_path_factory.mktemp("ws")
    shutil.copytree(digits, w / "data")
    for name in ("missing", "truncated", "wrongdtype"):
        shutil.copytree(digits, w / name)
    (w / "missing" / "shard-00001-of-00004.h5").unlink()
    shard = w / "truncated" / "shard-00001-of-00004.h5"
    shard.write_bytes(shard.read_bytes()[:1000])
    with h5py.File(w / "wrongdtype" / "shard-00001-of-00004.h5", "r+") as f:
        images = f["images"][:].astype(np.float32)
        del f["images"]
        f["images"] = images
    (w / "file.txt").write_text("a file\n")
    (w / "empty").mkdir()
    (w / "ro").mkdir(mode=0o555)
    os.symlink("loop", w / "loop")
    # sources of images
    (w / "f32").mkdir()
    Image.fromarray(np.ones((32, 32), np.float32)).save(w / "f32" / "f.tif")
    (w / "badimg").mkdir()
    (w / "badimg" / "bad.png").write_bytes(b"\x89PNG not really")
    (w / "badlater").mkdir()  # (the first image is good: the bad one is met half-way through the writing)
    for i in range(8):
        Image.new("L", (32, 32), 10 * i).save(w / "badlater" / f"{i}.png")
    shutil.copy(w / "badimg" / "bad.png", w / "badlater" / "7.png")
    np.save(w / "float.npy", np.zeros((4, 32, 32, 3), np.float32))
    np.save(w / "shape.npy", np.zeros((4, 5, 32, 32), np.uint8))
    (w / "trunc.npy").write_bytes((w / "shape.npy").read_bytes()[:100])
    # checkpoints, and the run that wrote the real one
    shutil.copytree(checkpoint.parent.parent, w / "run")
    shutil.copy(checkpoint, w / "ckpt.pt")
    (w / "truncated.pt").write_bytes(checkpoint.read_bytes()[:5000])
    (w / "garbage.pt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(3)}, w / "notckpt.pt")
    # job files and host files
    (w / "job.yaml").write_text("data: data\nout: out\n")
    (w / "unknown.yaml").write_text("data: data\nbatch_sise: 8\n")
    (w / "wrongtype.yaml").write_text("data: data\nbatch_size: eight\n")
    (w / "badyaml.yaml").write_text("data: data\nbatch_size: [8\nout: x\n")
    (w / "empty.yaml").write_text("")
    (w / "list.yaml").write_text("- data\n- out\n")
    (w / "hosts.bad").write_text("node1 slots=two\n")
    (w / "hosts.empty").write_text("# nobody\n")
    # unreadable files (the rows that use them are skipped where permissions are not enforced: root)
    (w / "secret").mkdir()
    shutil.copy(w / "job.yaml", w / "secret" / "job.yaml")
    shutil.copy(checkpoint, w / "secret" / "ckpt.pt")
    (w / "secretimg").mkdir()
    Image.new("L", (32, 32)).save(w / "secretimg" / "a.png")
    for path in (w / "secret" / "job.yaml", w / "secret" / "ckpt.pt", w / "secretimg" / "a.png"):
        path.chmod(0)
    return w


T = "train --data data --out out"  # (a good start: each row spoils one thing)
S = "sample ckpt.pt --out s.png"
E = "evaluate ckpt.pt --data data"
L = "launch --dry-run --np 2"


def _permissions_ignored() -> bool:
    """Whether this process writes into a read-only directory all the same (root, with CAP_DAC_OVERRIDE)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o555)
        try:
            Path(d, "x").touch()
            return True
        except PermissionError:
            return False
        finally:
            os.chmod(d, 0o755)


PERMISSIONS_IGNORED = _permissions_ignored()

# command line, words the one line holds, [environment]; "LIST": `data check` lists every problem first
MATRIX = [
    # prepare: SOURCE (missing, a file, empty, a symlink loop, bad images and arrays), OUT, numbers, choices
    ("prepare nowhere out", ["nowhere", "no such file or folder"]),
    ("prepare file.txt out", ["file.txt", "unknown kind of source"]),
    ("prepare empty out", ["empty", "no images found"]),
    ("prepare loop out", ["loop", "symbolic link"]),
    ("prepare f32 out", ["f.tif", "mode F"]),
    ("prepare badimg out", ["bad.png", "cannot read the image"]),
    ("prepare badlater out --shards 4 --no-shuffle", ["7.png", "cannot read the image"]),
    ("prepare float.npy out", ["float.npy", "dtype float32"]),
    ("prepare shape.npy out", ["shape.npy", "shape (4, 5, 32, 32)"]),
    ("prepare trunc.npy out", ["trunc.npy", "not a readable .npy"]),
    ("prepare digits file.txt", ["file.txt", "is a file"]),
    ("prepare digits data", ["data", "already holds a dataset"]),
    ("prepare digits ro/out", ["ro/out", "cannot create"], "ROOT"),
    ("prepare secretimg out", ["a.png", "Permission denied"], "ROOT"),
    ("prepare digits out --shards 0", ["--shards", ">= 1"]),
    ("prepare digits out --shards -3", ["--shards", ">= 1"]),
    ("prepare digits out --shards 99999999999", ["--shards", "shards for 1797 images"]),
    ("prepare digits out --shards nan", ["--shards", "not a valid integer"]),
    ("prepare digits out --per-shard 0", ["--per-shard", ">= 1"]),
    ("prepare digits out --shards 2 --per-shard 3", ["--shards and --per-shard"]),
    ("prepare digits out --size 48", ["--size", "48x48"]),
    ("prepare digits out --size -32", ["--size", "-32"]),
    ("prepare digits out --channels 2", ["--channels", "'2'"]),
    ("prepare digits out --compression zip", ["--compression", "'zip'"]),
    ("prepare digits out --workers 0", ["--workers", ">= 1"]),
    ("prepare digits out --seed -1", ["--seed", "-1"]),
    ("prepare digits out --holdout 0", ["--holdout 0", "holds out 0 of the source's 1,797 images"]),
    ("prepare digits out --holdout 1797", ["--holdout 1797", "keep at least one"]),
    ("prepare digits out --holdout 100%", ["--holdout 100%", "keep at least one"]),
    ("prepare digits out --holdout half", ["--holdout", "'half' is not a number of images"]),
    # data check: DIR missing, a file, empty, and data with one thing wrong
    ("data check nowhere", ["nowhere", "no such dataset directory"]),
    ("data check file.txt", ["file.txt", "not a dataset directory"]),
    ("data check empty", ["manifest.json", "not found"]),
    ("data check truncated", ["truncated", "1 problem(s)"], "LIST"),
    ("data check missing", ["missing", "1 problem(s)"], "LIST"),
    ("data check wrongdtype", ["wrongdtype", "problem(s)"], "LIST"),
    # train: --data, --out, numbers, choices, --resume, job files, variables
    ("train --data nowhere --out out", ["nowhere", "no such dataset directory"]),
    ("train --data file.txt --out out", ["file.txt", "not a dataset directory"]),
    ("train --data empty --out out", ["manifest.json", "not found"]),
    ("train --data missing --out out", ["shard-00001-of-00004.h5", "missing"]),
    ("train --data truncated --out out", ["shard-00001-of-00004.h5", "truncated"]),
    ("train --data wrongdtype --out out", ["shard-00001-of-00004.h5", "bytes but manifest.json says"]),
    ("train --data data --out file.txt", ["--out file.txt", "not a directory"]),
    ("train --data data --out loop", ["--out loop", "symbolic link"]),
    ("train --data data --out ro/out", ["--out ro/out", "cannot create"], "ROOT"),
    ("train --data data --out run", ["run", "holds an earlier run"]),
    (f"{T} --batch-size 0", ["--batch-size", "must be >= 1, got 0"]),
    (f"{T} --batch-size -1", ["--batch-size", "must be >= 1, got -1"]),
    (f"{T} --batch-size 99999999", ["fewer than one batch of 99999999"]),
    (f"{T} --batch-size nan", ["--batch-size", "not a valid integer"]),
    (f"{T} --lr-g nan", ["--lr-g", "got nan"]),
    (f"{T} --lr-g inf", ["--lr-g", "finite, got inf"]),
    (f"{T} --lr-g -1e-4", ["--lr-g", "must be > 0"]),
    (f"{T} --lr-g fast", ["--lr-g", "not a valid float"]),
    (f"{T} --beta1 1.5", ["--beta1", "[0, 1)"]),
    (f"{T} --r1 inf", ["--r1", "finite"]),
    (f"{T} --max-steps 0", ["--max-steps", "must be >= 1, got 0"]),
    (f"{T} --seed -5", ["--seed", "must be >= 0, got -5"]),
    (f"{T} --epochs 0", ["--epochs 0", "no generator step"]),
    (f"{T} --image-size 48", ["--image-size", "48"]),
    (f"{T} --model resnt", ["--model", "'resnt'"]),
    (f"{T} --loss hinj", ["--loss", "'hinj'"]),
    (f"{T} --augment colour", ["--augment", "colour"]),
    (f"{T} --placement G=gpu0,D=qpu", ["--placement", "qpu"]),
    (f"{T} --resume nowhere.pt", ["--resume nowhere.pt", "no such checkpoint"]),
    (f"{T} --resume garbage.pt", ["garbage.pt", "not a file torch.save writes"]),
    (f"{T} --resume truncated.pt", ["truncated.pt", "truncated"]),
    ("train --data data --out run --resume notckpt.pt", ["notckpt.pt", "not an hvdgan checkpoint"]),
    ("train --data data --out run --resume auto --ngf 16", ["another G architecture", "ngf: checkpoint 8 vs now 16"]),
    (f"{T} --eval-every 1 --eval-real-num 5000", ["--eval-real-num 5000", "1,797 images"]),
    (f"{T} --eval-every 1 --inception nowhere.pt", ["nowhere.pt", "not found"]),
    ("train --job nowhere.yaml", ["nowhere.yaml", "job file not found"]),
    ("train --job empty", ["empty", "is a directory"]),
    ("train --job loop", ["loop", "cannot read the job file"]),
    ("train --job unknown.yaml", ["unknown.yaml", "batch_sise", "batch_size"]),
    ("train --job wrongtype.yaml", ["wrongtype.yaml", "batch_size", "expected int, got 'eight'"]),
    ("train --job badyaml.yaml", ["badyaml.yaml, line 3", "not valid YAML"]),
    ("train --job empty.yaml", ["no dataset directory given"]),
    ("train --job list.yaml", ["list.yaml", "a mapping"]),
    ("train --job secret/job.yaml", ["secret/job.yaml", "is not readable"], "ROOT"),
    ("train --job ckpt.pt", ["ckpt.pt", "not a text file"]),
    ("train --out out", ["HVDGAN_TRAIN_BATCH_SIZE", "must be >= 1, got 0"],
     {"HVDGAN_TRAIN_DATA": "data", "HVDGAN_TRAIN_BATCH_SIZE": "0"}),
    ("train --out out", ["HVDGAN_TRAIN_BATCH_SIZE", "'abc' is not a valid integer"],
     {"HVDGAN_TRAIN_DATA": "data", "HVDGAN_TRAIN_BATCH_SIZE": "abc"}),
    ("train --out out", ["HVDGAN_TRAIN_MODEL", "'resnt'"],
     {"HVDGAN_TRAIN_DATA": "data", "HVDGAN_TRAIN_MODEL": "resnt"}),
    ("train --out out", ["HVDGAN_TRAIN_TENSORBOARD", "maybe"],
     {"HVDGAN_TRAIN_DATA": "data", "HVDGAN_TRAIN_TENSORBOARD": "maybe"}),
    ("train --out out", ["nowhere.yaml", "not found"], {"HVDGAN_TRAIN_JOB": "nowhere.yaml"}),
    # sample: CHECKPOINT (missing, a directory, garbage, truncated, not hvdgan's), --out, numbers
    ("sample nowhere.pt", ["nowhere.pt", "checkpoint not found"]),
    ("sample empty", ["empty", "is a directory"]),
    ("sample garbage.pt --out s.png", ["garbage.pt", "not a file torch.save writes"]),
    ("sample truncated.pt --out s.png", ["truncated.pt", "truncated"]),
    ("sample notckpt.pt --out s.png", ["notckpt.pt", "not an hvdgan checkpoint"]),
    ("sample secret/ckpt.pt --out s.png", ["secret/ckpt.pt", "is not readable"], "ROOT"),
    ("sample ckpt.pt --out file.txt", ["file.txt", "exists"]),
    ("sample ckpt.pt --out s.jpg", ["s.jpg", ".png"]),
    ("sample ckpt.pt --out empty --overwrite", ["empty", "is a directory"]),
    ("sample ckpt.pt --single --out file.txt", ["file.txt", "not a directory"]),
    ("sample ckpt.pt --out loop", ["loop", "symbolic link"]),
    ("sample ckpt.pt --out file.txt/s.png", ["file.txt/s.png", "file.txt is a file"]),
    ("sample ckpt.pt --out ro/s.png", ["ro/s.png", "cannot write"], "ROOT"),
    (f"{S} -n 0", ["--num", "0"]),
    (f"{S} -n 99999999", ["--num", "99999999"]),
    (f"{S} -n many", ["--num", "not a valid integer"]),
    (f"{S} --class 3", ["--class 3", "unconditional"]),
    # evaluate: CHECKPOINT_OR_RUN_DIR, --real, --data, numbers, choices, --out, --inception
    ("evaluate nowhere", ["nowhere", "no such checkpoint file or run directory"]),
    ("evaluate empty", ["empty", "no ckpt-*.pt"]),
    ("evaluate garbage.pt", ["garbage.pt", "not a file torch.save writes"]),
    ("evaluate --real data", ["--real DIR_A --real DIR_B"]),
    ("evaluate --real data --real nowhere", ["nowhere", "no such dataset directory"]),
    ("evaluate ckpt.pt --data nowhere", ["nowhere", "no such dataset directory"]),
    ("evaluate ckpt.pt --data data --split holdout", ["--split holdout", "data has no held-out split"]),
    ("evaluate ckpt.pt --split heldout", ["--split", "'heldout'"]),
    (f"{E} --metrics fdi", ["--metrics", "fdi"]),
    (f"{E} -n 1", ["--num", "1"]),
    (f"{E} --real-num 5000", ["--real-num 5000", "1,797 images"]),
    (f"{E} --batch-size 0", ["--batch-size", "0"]),
    (f"{E} --device gpu", ["--device", "'gpu'"]),
    (f"{E} --out empty", ["empty", "is a directory"]),
    (f"{E} --out nowhere/r.json", ["--out nowhere/r.json", "no directory"]),
    (f"{E} --out ro/r.json", ["--out ro/r.json", "not writable"], "ROOT"),
    (f"{E} --inception nowhere.pt", ["nowhere.pt", "not found"]),
    # launch: --np, --hosts, --hostfile, --launcher, --mca, --min-np, JOB, the options for train
    ("launch --dry-run --np 0 job.yaml", ["--np", "0"]),
    ("launch --dry-run --np x job.yaml", ["--np", "not a valid integer"]),
    ("launch --dry-run job.yaml", ["--np"]),
    (f"{L} --hosts a:b:c job.yaml", ["--hosts", "'a:b:c' is not HOST:SLOTS"]),
    (f"{L} --hosts localhost:0 job.yaml", ["--hosts", "'localhost:0' is not HOST:SLOTS"]),
    ("launch --np 8 --hosts localhost:2 job.yaml", ["--np 8", "2 slots"]),
    (f"{L} --hostfile nowhere job.yaml", ["--hostfile", "nowhere"]),
    (f"{L} --hostfile hosts.bad job.yaml", ["hosts.bad, line 1", "slots=two"]),
    (f"{L} --hostfile hosts.empty job.yaml", ["hosts.empty", "no hosts"]),
    (f"{L} --launcher qsub job.yaml", ["--launcher", "'qsub'"]),
    (f"{L} --launcher mpirun --mca pml job.yaml", ["--mca", "'pml' is not KEY=VALUE"]),
    (f"{L} --elastic --min-np 0 job.yaml", ["--min-np", "0"]),
    (f"{L} nowhere.yaml", ["nowhere.yaml", "job file not found"]),
    (f"{L} badyaml.yaml", ["badyaml.yaml, line 3"]),
    (f"{L} --launcher mpirun job.yaml", ["HVDGAN_MPIRUN_MCA", "'pml' is not KEY=VALUE"], {"HVDGAN_MPIRUN_MCA": "pml"}),
    ("prepare digits out", ["HVDGAN_PREPARE_SHARDS", "'abc' is not a valid integer"], {"HVDGAN_PREPARE_SHARDS": "abc"}),
    (f"{L} job.yaml -- --batch-size 0", ["--batch-size", "must be >= 1"]),
    (f"{L} job.yaml -- --modle resnet", ["--modle"]),
    # info and the command itself
    ("info --placement G=gpu0,D=qpu", ["--placement", "qpu"]),
    ("info --jsn", ["--jsn"]),
    ("trian --data data", ["trian", "train"]),
    ("--bogus", ["--bogus"]),
]


def _row(row):
    argv, words, *rest = row
    env = next((r for r in rest if isinstance(r, dict)), None)
    skip = pytest.mark.skipif(PERMISSIONS_IGNORED, reason="permissions are not enforced here (root)")
    marks = [skip] if "ROOT" in rest else []
    return pytest.param(argv, words, env, "LIST" in rest, id=argv + (f" [{','.join(env)}]" if env else ""),
                        marks=marks)


@pytest.mark.parametrize("argv, words, env, listing", [_row(r) for r in MATRIX])
def test_bad_input(ws, argv, words, env, listing):
    import shlex

    before = digest(ws)
    one_line(cli(*shlex.split(argv), env=env, cwd=ws), *words, listing=listing)
    assert digest(ws) == before, "something was written"
