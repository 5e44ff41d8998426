"""The slot-attention video encoder (SAVi family; DESIGN.md §6).

    frames ─ SlotEncoder (CNN + soft position embedding) ─> features (B, T, N, D)
    slots_0 ~ shared Gaussian
    for t: slots_t = Corrector(features_t, Predictor(slots_{t-1}))      (slot attention / transformer block)
    BroadcastDecoder(slots_t) ─> per-slot RGB and alpha mask ─> reconstruction of frame t

Trained only to reconstruct the frames; the alpha masks are the object segmentation the
object-discovery metrics score. Every part treats slots alike, so the whole model is
permutation-equivariant in the slots.

Shapes: B batch, T time, K slots, D slot width, N = feature pixels, P = decoded pixels,
R = the model's resolution (frames are resized to R x R).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .slot_attention import SlotAttention, SlotPredictor


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of the video encoder (configs/encoder/*.yaml)."""

    resolution: int = 64  # frames are resized (area-averaged) to R x R
    num_slots: int = 7
    slot_dim: int = 64
    cnn_channels: int = 32
    cnn_layers: int = 4
    cnn_kernel: int = 5
    cnn_stride: int = 1  # stride of the first conv: features are (R / stride)^2
    iters_first: int = 3  # slot-attention iterations on a video's first frame
    iters: int = 1  # on every later frame, starting from the predicted slots
    implicit: bool = True  # implicit differentiation of slot attention
    mlp_hidden: int = 128
    predictor_heads: int = 4
    predictor_hidden: int = 256
    decoder_hidden: int = 32  # channels of the decoder's convolutions
    decoder_size: int = 8  # the grid slots are broadcast to; upsampled x2 until R

    def __post_init__(self) -> None:
        for name in (
            "resolution",
            "num_slots",
            "slot_dim",
            "cnn_channels",
            "cnn_layers",
            "cnn_stride",
            "iters_first",
            "iters",
            "mlp_hidden",
            "predictor_heads",
            "predictor_hidden",
            "decoder_hidden",
            "decoder_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"encoder.{name} must be >= 1, got {getattr(self, name)}")
        if self.cnn_kernel < 1 or self.cnn_kernel % 2 == 0:
            raise ValueError(f"encoder.cnn_kernel must be odd and >= 1, got {self.cnn_kernel}")
        if self.resolution % self.cnn_stride:
            raise ValueError(
                f"encoder.resolution {self.resolution} must be divisible by "
                f"encoder.cnn_stride {self.cnn_stride}"
            )
        ratio = self.resolution // self.decoder_size
        if self.resolution % self.decoder_size or ratio & (ratio - 1):
            raise ValueError(
                f"encoder.resolution ({self.resolution}) must be encoder.decoder_size "
                f"({self.decoder_size}) times a power of two"
            )
        if self.slot_dim % self.predictor_heads:
            raise ValueError(
                f"encoder.slot_dim {self.slot_dim} must be divisible by "
                f"encoder.predictor_heads {self.predictor_heads}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def position_grid(size: int, device=None) -> torch.Tensor:
    """(size * size, 4): (x, y, 1 - x, 1 - y) at pixel centres, row-major."""
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(c, c, indexing="ij")
    grid = torch.stack([x, y], dim=-1).reshape(-1, 2)
    return torch.cat([grid, 1.0 - grid], dim=-1)


class SlotEncoder(nn.Module):
    """CNN with soft position embedding. (B, 3, R, R) -> (B, N, D)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        C, k = cfg.cnn_channels, cfg.cnn_kernel
        layers: list[nn.Module] = []
        for i in range(cfg.cnn_layers):
            stride = cfg.cnn_stride if i == 0 else 1
            layers += [nn.Conv2d(3 if i == 0 else C, C, k, stride=stride, padding=k // 2), nn.ReLU()]
        self.cnn = nn.Sequential(*layers)
        self.size = cfg.resolution // cfg.cnn_stride
        self.register_buffer("grid", position_grid(self.size), persistent=False)
        self.pos = nn.Linear(4, C)
        self.norm = nn.LayerNorm(C)
        self.mlp = nn.Sequential(nn.Linear(C, C), nn.ReLU(), nn.Linear(C, cfg.slot_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.cnn(images)  # (B, C, R', R')
        x = rearrange(x, "b c h w -> b (h w) c") + self.pos(self.grid)  # (B, N, C)
        return self.mlp(self.norm(x))  # (B, N, D)


class BroadcastDecoder(nn.Module):
    """Spatial broadcast decoder (SAVi's): each slot is decoded alone into RGB and an alpha logit.

    A slot is broadcast over a ``decoder_size`` x ``decoder_size`` grid, a soft position
    embedding is added, and transposed convolutions upsample it to R x R (stride 2 each), so
    an object looks the same wherever it is. Alpha is a softmax over slots and the
    reconstruction is the alpha-weighted sum of the slots' RGB.

    (B, K, D) -> recon (B, 3, R, R), alpha (B, K, R, R), rgb (B, K, 3, R, R).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        C, s = cfg.decoder_hidden, cfg.decoder_size
        self.size = s
        self.register_buffer("grid", position_grid(s), persistent=False)
        self.pos = nn.Linear(4, cfg.slot_dim)
        layers: list[nn.Module] = []
        ch = cfg.slot_dim
        while s < cfg.resolution:
            layers += [nn.ConvTranspose2d(ch, C, 5, stride=2, padding=2, output_padding=1), nn.ReLU()]
            ch, s = C, s * 2
        layers += [nn.Conv2d(ch, C, 5, padding=2), nn.ReLU(), nn.Conv2d(C, 4, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, K, D = slots.shape
        s = self.size
        x = slots.reshape(B * K, 1, D) + self.pos(self.grid)  # (B K, s*s, D)
        x = self.net(rearrange(x, "n (h w) d -> n d h w", h=s))  # (B K, 4, R, R)
        x = rearrange(x, "(b k) c h w -> b k c h w", b=B)
        rgb, logits = x[:, :, :3], x[:, :, 3]
        alpha = logits.float().softmax(dim=1).to(rgb.dtype)  # (B, K, R, R) over slots
        recon = (alpha[:, :, None] * rgb).sum(dim=1)  # (B, 3, R, R)
        return recon, alpha, rgb


@dataclass
class VideoOutput:
    """What the encoder produces for a clip."""

    slots: torch.Tensor  # (B, T, K, D) corrected slots
    recon: torch.Tensor  # (B, T, 3, R, R) in [-1, 1]
    alpha: torch.Tensor  # (B, T, K, R, R) per-slot masks, sum to 1 over K
    rgb: torch.Tensor  # (B, T, K, 3, R, R) per-slot colours
    attn: torch.Tensor  # (B, T, K, N) slot attention of the last iteration
    target: torch.Tensor  # (B, T, 3, R, R) the resized frames in [-1, 1]


def frames_to_input(frames: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, T, 3, R, R) in [-1, 1], area-resized."""
    if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 of shape (B, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
        )
    B = frames.shape[0]
    x = rearrange(frames, "b t h w c -> (b t) c h w").float() / 127.5 - 1.0
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="area")
    return rearrange(x, "(b t) c h w -> b t c h w", b=B)


class SAVi(nn.Module):
    """Slot attention for video: encoder, corrector, predictor, decoder, composed as in SAVi."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SlotEncoder(cfg)
        self.corrector = SlotAttention(
            cfg.slot_dim, cfg.slot_dim, iters=cfg.iters, mlp_hidden=cfg.mlp_hidden, implicit=cfg.implicit
        )
        self.predictor = SlotPredictor(cfg.slot_dim, cfg.predictor_heads, cfg.predictor_hidden)
        self.decoder = BroadcastDecoder(cfg)

    def forward(
        self,
        frames: torch.Tensor,
        state: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        initial_slots: torch.Tensor | None = None,
    ) -> VideoOutput:
        """Encode and reconstruct a clip.

        frames: uint8 (B, T, H, W, 3). ``state``: the corrected slots (B, K, D) of the frame
        before the clip, to carry a video across clips; without it the first frame starts
        from ``initial_slots`` (B, K, D) or, by default, fresh draws from the shared Gaussian
        (``generator`` makes them reproducible) and gets ``iters_first`` iterations.
        """
        cfg = self.cfg
        x = frames_to_input(frames, cfg.resolution)  # (B, T, 3, R, R)
        B, T = x.shape[:2]
        feats = self.encoder(x.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, N, D)
        slots_t, attn_t = [], []
        for t in range(T):
            if t == 0 and state is None:
                slots = (
                    self.corrector.init_slots(B, cfg.num_slots, generator)
                    if initial_slots is None
                    else initial_slots
                )
                iters = cfg.iters_first
            else:
                slots = self.predictor(state if t == 0 else slots)
                iters = cfg.iters
            slots, attn = self.corrector(feats[:, t], slots, iters=iters)
            slots_t.append(slots)
            attn_t.append(attn)
        slots = torch.stack(slots_t, dim=1)  # (B, T, K, D)
        recon, alpha, rgb = self.decoder(slots.flatten(0, 1))
        return VideoOutput(
            slots=slots,
            recon=recon.unflatten(0, (B, T)),
            alpha=alpha.unflatten(0, (B, T)),
            rgb=rgb.unflatten(0, (B, T)),
            attn=torch.stack(attn_t, dim=1),
            target=x,
        )

    @staticmethod
    def loss(out: VideoOutput) -> torch.Tensor:
        """Mean squared reconstruction error over pixels and channels."""
        return F.mse_loss(out.recon.float(), out.target.float())

    def training_loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The trainer's interface: a clip (B, T, H, W, 3) uint8 -> (loss, metrics)."""
        frames = frames.to(self.encoder.pos.weight.device, non_blocking=True)
        loss = self.loss(self(frames))
        return loss, {"mse": float(loss.detach())}


def segmentation(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Alpha masks (..., K, R, R) -> slot ids (..., H, W) at the frames' resolution.

    The masks are resized bilinearly before the argmax, so a model run at a lower resolution
    is scored on the full-resolution ground truth.
    """
    lead, (K, R, _) = alpha.shape[:-3], alpha.shape[-3:]
    a = alpha.reshape(-1, K, R, R).float()
    if (R, R) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return a.argmax(dim=1).reshape(*lead, *size)
