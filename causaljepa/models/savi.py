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
    decoder_hidden: int = 64
    decoder_layers: int = 3  # per-pixel layers of the broadcast decoder (>= 2)

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
        if self.decoder_layers < 2:
            raise ValueError(f"encoder.decoder_layers must be >= 2, got {self.decoder_layers}")
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
    """Spatial broadcast decoder, pixel-wise, with alpha masks anchored on slot attention.

    Each slot is broadcast over the R x R grid, a soft position embedding is added, and a
    per-pixel MLP (1x1 convolutions) gives RGB and an alpha logit. The alpha masks are a
    softmax over slots of ``logit + log(attention)``: the corrector's attention (which
    already splits the pixels between slots) is the prior, and the decoder's logits refine
    it. The logit layer starts at zero, so at first alpha is the attention itself.

    Why: with free alpha logits, small objects (a few pixels at 32x32) are a tiny part of the
    loss, and the decoder first settles on one slot that paints the whole frame, or on slots
    that tile the frame by position; on 2 CPU cores neither state broke within 1,300 steps.
    Anchored on attention, the reconstruction error reaches the competition between slots
    directly, and objects take slots of their own within a few hundred steps (issue 3 notes).

    The first layer is applied to the slot and to the grid separately and added, so its
    cost does not grow with R^2 x K.

    slots (B, K, D), attn (B, K, R, R) -> recon (B, 3, R, R), alpha (B, K, R, R), rgb (B, K, 3, R, R).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        h = cfg.decoder_hidden
        self.size = cfg.resolution
        self.register_buffer("grid", position_grid(self.size), persistent=False)
        self.slot_in = nn.Linear(cfg.slot_dim, h)
        self.pos_in = nn.Linear(4, h)
        hidden: list[nn.Module] = []
        for _ in range(cfg.decoder_layers - 2):
            hidden += [nn.Linear(h, h), nn.ReLU()]
        self.hidden = nn.Sequential(*hidden)
        self.rgb = nn.Linear(h, 3)
        self.logit = nn.Linear(h, 1)
        nn.init.zeros_(self.logit.weight)
        nn.init.zeros_(self.logit.bias)

    def forward(
        self, slots: torch.Tensor, attn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.hidden(
            torch.relu(self.slot_in(slots)[:, :, None, :] + self.pos_in(self.grid))
        )  # (B, K, P, h)
        rgb = self.rgb(x)  # (B, K, P, 3)
        prior = attn.flatten(2).float().clamp_min(1e-6).log()  # (B, K, P)
        alpha = (self.logit(x)[..., 0].float() + prior).softmax(dim=1).to(rgb.dtype)  # over slots
        recon = (alpha[..., None] * rgb).sum(dim=1)  # (B, P, 3)
        R = self.size
        recon = rearrange(recon, "b (h w) c -> b c h w", h=R)
        alpha = rearrange(alpha, "b k (h w) -> b k h w", h=R)
        rgb = rearrange(rgb, "b k (h w) c -> b k c h w", h=R)
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
        attn = torch.stack(attn_t, dim=1)  # (B, T, K, N)
        s = self.encoder.size
        masks = attn.flatten(0, 1).unflatten(-1, (s, s))  # (B T, K, s, s)
        if s != cfg.resolution:
            masks = F.interpolate(masks.float(), size=(cfg.resolution, cfg.resolution), mode="bilinear")
        recon, alpha, rgb = self.decoder(slots.flatten(0, 1), masks)
        return VideoOutput(
            slots=slots,
            recon=recon.unflatten(0, (B, T)),
            alpha=alpha.unflatten(0, (B, T)),
            rgb=rgb.unflatten(0, (B, T)),
            attn=attn,
            target=x,
        )

    @staticmethod
    def loss(out: VideoOutput) -> torch.Tensor:
        """Mean squared reconstruction error over pixels and channels."""
        return F.mse_loss(out.recon.float(), out.target.float())

    def training_loss(self, batch: torch.Tensor | dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The trainer's interface -> (loss, metrics). ``batch``: clips (B, T, H, W, 3) uint8, or
        {"frames": clips, "slot_noise": (B, K, D) standard normal noise of the initial slots}
        (what the encoder's training draws, per item, from its checkpointed generator)."""
        device = self.encoder.pos.weight.device
        if isinstance(batch, dict):
            frames = batch["frames"].to(device, non_blocking=True)
            initial = self.corrector.slots_from_noise(batch["slot_noise"].to(device, non_blocking=True))
        else:
            frames, initial = batch.to(device, non_blocking=True), None
        loss = self.loss(self(frames, initial_slots=initial))
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
