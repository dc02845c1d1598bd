"""PyTorch renderings for the benchmark harness: DSA and the contrastive term.

Written for `launch/bench/benchmark.py` so that its PyTorch step does the work a real run
does: the same DSA op families and parameter ranges as `datm_clr_jax/augment.py` (per-sample
parameters, "single" = one random family for the whole batch, "multiple" = all in turn), and
the DATM-CLR term of `datm_clr_jax/step.py` (two "multiple" views, the student's features,
a random width-matched head, SupCon). It mirrors the reference's cost, not its random
stream: numbers are compared by time, never value by value.
"""

from __future__ import annotations

import math

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


def _u(torch, b, device, lo=0.0, hi=1.0):
  return torch.rand(b, 1, 1, 1, device=device) * (hi - lo) + lo


def color(torch, x):
  b, dev = x.shape[0], x.device
  x = x + (_u(torch, b, dev) - 0.5)
  m = x.mean(dim=1, keepdim=True)
  x = (x - m) * (_u(torch, b, dev) * 2.0) + m
  m = x.mean(dim=(1, 2, 3), keepdim=True)
  return (x - m) * (_u(torch, b, dev) + 0.5) + m


def crop(torch, x):
  """Integer translation in [-s, s], s = round(H / 8), zero fill (gather of a padded copy)."""
  b, _, h, w = x.shape
  s = int(h * 0.125 + 0.5)
  dy = torch.randint(-s, s + 1, (b, 1, 1), device=x.device)
  dx = torch.randint(-s, s + 1, (b, 1, 1), device=x.device)
  gy = (torch.arange(h, device=x.device)[None, :, None] + dy + s).expand(b, h, w)
  gx = (torch.arange(w, device=x.device)[None, None, :] + dx + s).expand(b, h, w)
  padded = torch.nn.functional.pad(x, (s, s, s, s))
  bi = torch.arange(b, device=x.device)[:, None, None].expand(b, h, w)
  return padded.permute(0, 2, 3, 1)[bi, gy, gx].permute(0, 3, 1, 2)


def cutout(torch, x):
  b, _, h, w = x.shape
  c = int(h * 0.5 + 0.5)
  cy = torch.randint(0, h + (1 - c % 2), (b, 1), device=x.device) - c // 2
  cx = torch.randint(0, w + (1 - c % 2), (b, 1), device=x.device) - c // 2
  rows, cols = torch.arange(h, device=x.device)[None], torch.arange(w, device=x.device)[None]
  in_y = (rows >= cy) & (rows < cy + c)
  in_x = (cols >= cx) & (cols < cx + c)
  keep = ~(in_y[:, :, None] & in_x[:, None, :])
  return x * keep[:, None].to(x.dtype)


def flip(torch, x):
  mask = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5).to(x.dtype)
  return mask * x.flip(3) + (1 - mask) * x


def _affine(torch, x, theta):
  f = torch.nn.functional
  grid = f.affine_grid(theta, list(x.shape), align_corners=True)
  return f.grid_sample(x, grid, align_corners=True)


def scale(torch, x):
  b = x.shape[0]
  sx = torch.rand(b, device=x.device) * (1.2 - 1 / 1.2) + 1 / 1.2
  sy = torch.rand(b, device=x.device) * (1.2 - 1 / 1.2) + 1 / 1.2
  theta = torch.zeros(b, 2, 3, device=x.device)
  theta[:, 0, 0], theta[:, 1, 1] = sx, sy
  return _affine(torch, x, theta)


def rotate(torch, x):
  b = x.shape[0]
  a = (torch.rand(b, device=x.device) - 0.5) * 2 * math.radians(15.0)
  theta = torch.zeros(b, 2, 3, device=x.device)
  theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
  theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
  return _affine(torch, x, theta)


OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale,
       "rotate": rotate}


def dsa(torch, x, mode: str, families=FAMILIES):
  """x (B, C, H, W) -> the same shape; 'single', 'multiple' or 'none'."""
  if mode == "none":
    return x
  if mode == "single":
    return OPS[families[int(torch.randint(len(families), ()).item())]](torch, x)
  for name in families:
    x = OPS[name](torch, x)
  return x


def random_head(torch, feat_dim: int, out_dim: int, device):
  """A PyTorch-initialised MLP feat -> feat -> out (uniform +-1/sqrt(fan_in)), as tensors."""
  def linear(n_in, n_out):
    bound = 1 / math.sqrt(n_in)
    return ((torch.rand(n_out, n_in, device=device) * 2 - 1) * bound,
            (torch.rand(n_out, device=device) * 2 - 1) * bound)
  return linear(feat_dim, feat_dim), linear(feat_dim, out_dim)


def supcon(torch, z1, z2, labels, temperature: float = 0.1):
  """SupCon over the 2B views (positives: every other same-label view), mean over anchors."""
  z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
  sim = z @ z.T / temperature
  y = torch.cat([labels, labels])
  n = z.shape[0]
  not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
  pos = (y[:, None] == y[None, :]) & not_self
  sim = sim.masked_fill(~not_self, float("-inf"))
  log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
  mean_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / pos.sum(1)
  return -mean_pos.mean()


def contrast(torch, convnet, params, x, labels, head, depth: int):
  """L_contrast of a synthetic minibatch x (B, C, H, W) at student parameters `params`."""
  f = torch.nn.functional
  views = torch.cat([dsa(torch, x, "multiple"), dsa(torch, x, "multiple")])
  _, feats = convnet(params, views, depth=depth)
  (w1, b1), (w2, b2) = head
  z = f.linear(f.relu(f.linear(feats, w1, b1)), w2, b2)
  b = x.shape[0]
  return supcon(torch, z[:b], z[b:], labels)
