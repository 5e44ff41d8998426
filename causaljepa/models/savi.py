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

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .slot_attention import SlotAttention, SlotPredictor, check_update

ALPHA_PRIORS = ("attention", "gaussian", "attention_gaussian")
# The decoder's per-pixel hidden activations (frames x K x P x decoder_hidden) and the CNN's
# feature maps are run over at most this many bytes of frames at a time. Whole batches made
# tensors of hundreds of MB that every element-wise pass streamed through memory; in pieces that
# stay in the last-level cache the decoder ran 2.3-2.5 times as fast in training (forward and
# backward of 48 frames at 32x32, 436 against 173-189 ms on 2 AVX2 cores) and 4-6 times as fast
# in slot extraction (512 frames at a time). `python benchmarks/encoder_pieces.py`; README,
# "Encoder speed".
DECODER_PIECE_BYTES = 8 << 20
CNN_PIECE_BYTES = 2 << 20


def in_pieces(fn, rows: int, *tensors: torch.Tensor):
    """``fn`` over consecutive slices of ``rows`` along dim 0 of ``tensors``, outputs concatenated
    along dim 0 (a tensor, or a tuple of tensors): the same result as ``fn(*tensors)`` for a
    function that treats rows independently, with smaller intermediates. On CPU only: the pieces
    are sized for a CPU's cache, and a GPU keeps its large batches (no per-piece kernel launches)."""
    n = tensors[0].shape[0]
    if rows >= n or tensors[0].device.type != "cpu":
        return fn(*tensors)
    parts = [fn(*(t[i : i + rows] for t in tensors)) for i in range(0, n, rows)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))
    return torch.cat(parts)


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
    # the prior of the decoder's alpha masks: "attention" (the corrector's attention map) or
    # "gaussian" (a 2-D Gaussian per slot, fitted to its attention: see gaussian_prior) or
    # "attention_gaussian" (their product)
    alpha_prior: str = "attention"
    gaussian_weight: float = 1.0  # attention_gaussian: log attn + gaussian_weight * log N
    # > 0: training adds this weight times the reconstruction error under the pure Gaussian-
    # mixture prior (same RGB and logits), which costs a slot for holding two places or a ring
    mixture_loss_weight: float = 0.0
    # > 0: training adds this weight times the mean entropy (nats) of the alpha masks over
    # slots at each decoded pixel: two slots sharing an object (a fixed point of slot
    # attention, whose arg-max flickers between them from frame to frame) cost loss, and one
    # of them must take the object whole
    alpha_entropy_weight: float = 0.0
    # > 0: slot attention's logits get locality * log N(p; mu_k, S_k) of the slot's Gaussian
    # from its previous attention (the previous iteration, or the previous frame): a slot
    # keeps to where its object was, so one query cannot hold two far-apart objects
    locality: float = 0.0
    # the locality bias is locality * log(N + locality_floor): far from a slot's Gaussian the
    # bias is locality * log(floor), not -inf, so a slot can still take a strong match there
    # (an object entering the scene far from every free slot); 1 is a uniform density
    locality_floor: float = 0.1
    # slot attention's update: "mean" (weighted mean, the paper's) or "sum" (weighted sum
    # over N / K, which keeps each slot's mass: see SlotAttention)
    update_norm: str = "mean"
    # > 0 (with update_norm "mean"): a slot's update is divided by its attention mass plus this
    # many feature pixels, so a slot that holds almost nothing is almost not updated
    update_mass: float = 0.0
    # > 0: before a frame's correction, a slot whose attention on the frame before held less
    # than this many feature pixels is drawn afresh from the shared Gaussian. Near-empty slots
    # otherwise converge to one and the same vector (identical queries get identical attention,
    # a fixed point nothing equivariant can leave), and an entering object is then split evenly
    # between the copies or taken by an occupied slot. Off in the configs: it raised frame
    # FG-ARI over whole videos and cost tracking, as redrawn slots took halves of objects
    # (README, Encoder)
    refresh_mass: float = 0.0
    # > 0 (with refresh_mass): only a near-empty slot closer than this (Euclidean, in slot space)
    # to another near-empty slot is redrawn, i.e. only the copies, not every empty slot in every
    # frame (which gives a redrawn slot a chance to take half an object in every frame). Off in
    # the configs: one run at 1 was worse on every figure (README, Figures)
    refresh_distance: float = 0.0
    # > 0: a slot moves by mass / (mass + gate_mass) of the change slot attention's GRU and MLP
    # make (mass: its attention, in feature pixels), so near-empty slots keep their differences
    # instead of converging to one vector (see SlotAttention). Off in the configs: at 4 and 24
    # it slowed every slot's binding and FG-ARI fell (README, Encoder)
    gate_mass: float = 0.0
    # > 0: before each later frame's correction, every slot moves by slot_noise times the shared
    # Gaussian's spread times a standard normal draw. Slots that are copies of one another (the
    # near-empty ones, or two holding one object at half weight each) are a fixed point nothing
    # equivariant can leave; a small push separates them without redrawing any slot
    slot_noise: float = 0.0
    # > 0 (with locality): on a video's first frame, the first iteration's locality bias is an
    # isotropic Gaussian of this spread (in frame widths) around a place of the slot's own, read
    # from its draw from the shared Gaussian (uniform over the frame). Without it the first
    # iteration groups by content alone, and objects of like colour far apart start, and stay,
    # in one slot (README, Encoder)
    init_spread: float = 0.0
    # > 0: slot attention's logits are this times the cosine similarity of query and key, a
    # fixed range, instead of a dot product the model can grow until the locality bias no
    # longer counts (README, Encoder)
    cosine_scale: float = 0.0

    @property
    def frame_noise(self) -> bool:
        """Whether frames after the first draw noise (for ``slot_noise`` or ``refresh_mass``)."""
        return self.refresh_mass > 0 or self.slot_noise > 0

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
        if self.alpha_prior not in ALPHA_PRIORS:
            raise ValueError(
                f"encoder.alpha_prior must be one of {list(ALPHA_PRIORS)}, got {self.alpha_prior!r}"
            )
        if not self.gaussian_weight > 0:
            raise ValueError(f"encoder.gaussian_weight must be > 0, got {self.gaussian_weight}")
        for name in (
            "locality",
            "mixture_loss_weight",
            "refresh_mass",
            "refresh_distance",
            "slot_noise",
            "init_spread",
            "cosine_scale",
            "alpha_entropy_weight",
        ):
            if not getattr(self, name) >= 0:  # NaN too
                raise ValueError(f"encoder.{name} must be >= 0, got {getattr(self, name)}")
        if not self.locality_floor > 0:
            raise ValueError(f"encoder.locality_floor must be > 0, got {self.locality_floor}")
        check_update(self.update_norm, self.update_mass, self.gate_mass, "encoder.")
        if self.refresh_distance > 0 and self.refresh_mass == 0:
            raise ValueError(
                f"encoder.refresh_distance ({self.refresh_distance}) chooses among the slots that "
                "refresh_mass redraws; set encoder.refresh_mass > 0 too, or refresh_distance to 0"
            )
        if self.init_spread > 0 and self.locality == 0:
            raise ValueError(
                f"encoder.init_spread ({self.init_spread}) is a locality bias; set encoder.locality > 0 "
                "too, or init_spread to 0"
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
        C, R = self.pos.out_features, images.shape[-1]
        rows = max(1, CNN_PIECE_BYTES // (C * R * R * images.element_size()))
        x = in_pieces(self.cnn, rows, images)  # (B, C, R', R')
        x = rearrange(x, "b c h w -> b (h w) c") + self.pos(self.grid)  # (B, N, C)
        return self.mlp(self.norm(x))  # (B, N, D)


class BroadcastDecoder(nn.Module):
    """Spatial broadcast decoder, pixel-wise, with alpha masks anchored on slot attention.

    Each slot is broadcast over the R x R grid, a soft position embedding is added, and a
    per-pixel MLP (1x1 convolutions) gives RGB and an alpha logit. The alpha masks are a
    softmax over slots of ``logit + prior``, the prior made from the corrector's attention
    (which already splits the pixels between slots; ``alpha_prior``: its log, or with the
    slot's Gaussian), and the decoder's logits refine it. The logit layer starts at zero, so
    at first alpha is the prior itself.

    Why: with free alpha logits, small objects (a few pixels at 32x32) are a tiny part of the
    loss, and the decoder first settles on one slot that paints the whole frame, or on slots
    that tile the frame by position; on 2 CPU cores neither state broke within 1,300 steps.
    Anchored on attention, the reconstruction error reaches the competition between slots
    directly, and objects take slots of their own within a few hundred steps (issue 3 notes).

    The first layer is applied to the slot and to the grid separately and added, so its
    cost does not grow with R^2 x K.

    slots (B, K, D), prior (B, K, R^2) -> recon (B, 3, R, R), alpha (B, K, R, R), rgb (B, K, 3, R, R).
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
        self, slots: torch.Tensor, prior: torch.Tensor, aux_prior: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """slots (B, K, D), prior (B, K, P) log-prior of the alpha masks (fp32) ->
        recon, alpha, rgb, and the reconstruction under ``aux_prior`` (same RGB and logits,
        another prior; None without one)."""
        # both heads as one product: the activations are read once, and their gradient is one
        # product instead of two added together (the decoder's passes over x bound its speed)
        w = torch.cat([self.rgb.weight, self.logit.weight])  # (4, h)
        b = torch.cat([self.rgb.bias, self.logit.bias])
        pos = self.pos_in(self.grid)  # (P, h)

        def heads(s: torch.Tensor) -> torch.Tensor:
            x = self.hidden(torch.relu(self.slot_in(s)[:, :, None, :] + pos))  # (B', K, P, h)
            return F.linear(x, w, b)  # (B', K, P, 4)

        K, P, h = slots.shape[1], pos.shape[0], pos.shape[1]
        rows = max(1, DECODER_PIECE_BYTES // (K * P * h * slots.element_size()))
        out = in_pieces(heads, rows, slots)  # (B, K, P, 4)
        rgb, logit = out[..., :3], out[..., 3].float()  # (B, K, P, 3), (B, K, P)
        R = self.size

        def compose(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            alpha = (logit + p).softmax(dim=1).to(rgb.dtype)  # over slots
            recon = (alpha[..., None] * rgb).sum(dim=1)  # (B, P, 3)
            return rearrange(recon, "b (h w) c -> b c h w", h=R), alpha

        recon, alpha = compose(prior)
        aux = None if aux_prior is None else compose(aux_prior)[0]
        alpha = rearrange(alpha, "b k (h w) -> b k h w", h=R)
        rgb = rearrange(rgb, "b k (h w) c -> b k c h w", h=R)
        return recon, alpha, rgb, aux


def attention_prior(attn: torch.Tensor, size: int, resolution: int) -> torch.Tensor:
    """log of the attention maps, resized: attn (B, K, size^2) -> (B, K, resolution^2) fp32."""
    a = attn.float().unflatten(-1, (size, size))
    if size != resolution:
        a = F.interpolate(a, size=(resolution, resolution), mode="bilinear")
    return a.flatten(2).clamp_min(1e-6).log()


def log_density(attn: torch.Tensor, size: int, resolution: int) -> torch.Tensor:
    """log N(p; mu_k, S_k) of each slot's Gaussian, fitted to its attention (B, K, size^2),
    at the pixel centres of a resolution x resolution grid -> (B, K, resolution^2) fp32.

    mu_k and S_k are the attention-weighted mean and covariance of the attended pixel
    positions (in [0, 1]), plus one output pixel's variance on the diagonal.

    Both steps are matrix products: the moments are the attention times (x, y, x^2, y^2, xy)
    of the input pixels, and the quadratic form is a per-slot polynomial in (x, y) times the
    output pixels' monomials, so nothing of size (B, K, pixels, 2) is made. They run in fp32
    even under autocast: the variance is E[x^2] - mu^2 and the form cancels large terms, which
    bf16's 8-bit mantissa cannot carry.
    """
    with torch.autocast(device_type=attn.device.type, enabled=False):
        return _log_density(attn.float(), size, resolution)


def _log_density(a: torch.Tensor, size: int, resolution: int) -> torch.Tensor:
    x, y = position_grid(size, a.device)[:, :2].unbind(-1)  # (N,) each, in [0, 1]
    w = a / a.sum(-1, keepdim=True).clamp_min(1e-6)
    m = w @ torch.stack([x, y, x * x, y * y, x * y], dim=-1)  # (B, K, 5) moments
    mx, my = m[..., 0], m[..., 1]
    px = 1.0 / resolution**2
    sxx = (m[..., 2] - mx * mx).clamp_min(0) + px
    syy = (m[..., 3] - my * my).clamp_min(0) + px
    sxy = m[..., 4] - mx * my
    det = (sxx * syy - sxy * sxy).clamp_min(px * px)  # (B, K)
    # (p - mu)^T S^-1 (p - mu) = coefficients . (x^2, y^2, xy, x, y, 1)
    coef = (
        torch.stack(
            [
                syy,
                sxx,
                -2 * sxy,
                2 * (sxy * my - syy * mx),
                2 * (sxy * mx - sxx * my),
                syy * mx * mx - 2 * sxy * mx * my + sxx * my * my,
            ],
            dim=-1,
        )
        / det[..., None]
    )  # (B, K, 6)
    ox, oy = position_grid(resolution, a.device)[:, :2].unbind(-1)  # (P,) each
    monomials = torch.stack([ox * ox, oy * oy, ox * oy, ox, oy, torch.ones_like(ox)])  # (6, P)
    maha = coef @ monomials  # (B, K, P)
    return (-0.5 * det.log() - math.log(2 * math.pi))[..., None] - 0.5 * maha


def _log_share(attn: torch.Tensor) -> torch.Tensor:
    """log of each slot's share of the attention: (B, K, N) -> (B, K, 1)."""
    return attn.float().mean(-1, keepdim=True).clamp_min(1e-6).log()


def gaussian_prior(attn: torch.Tensor, size: int, resolution: int) -> torch.Tensor:
    """Per slot, a 2-D Gaussian fitted to its attention, as a mixture: (B, K, size^2) -> (B, K, resolution^2).

    Slot k's attention gives a mass share pi_k (its mean over pixels; the shares sum to 1)
    and a Gaussian N(mu_k, S_k) (see log_density). The log-prior at a decoded pixel p is
    log pi_k + log N(p; mu_k, S_k): the responsibilities of a Gaussian mixture.

    Why: with the attention itself as the prior, the reconstruction does not care which
    pixels a slot groups (two objects of one colour in one slot, an object's rim in a spare
    slot, an object split over slots all reconstruct as well), so nothing pushes slots to
    bind whole, single objects. A Gaussian is one compact blob: a slot spread over two
    objects, or over a ring, paints the pixels between them and the loss says so.
    """
    return _log_share(attn) + log_density(attn, size, resolution)


def attention_gaussian_prior(
    attn: torch.Tensor, size: int, resolution: int, weight: float = 1.0
) -> torch.Tensor:
    """The attention times its slot's Gaussian: log attn + weight * log N(p; mu_k, S_k).

    The attention keeps the fast start of the attention prior (objects take slots within a
    few hundred steps); the Gaussian factor takes pixels from a slot whose attention is
    spread over two places or a ring and gives them to compact slots, so such a grouping
    costs reconstruction error.
    """
    return attention_prior(attn, size, resolution) + weight * log_density(attn, size, resolution)


def alpha_prior(cfg: EncoderConfig, attn: torch.Tensor, size: int) -> torch.Tensor:
    """The configured log-prior of the alpha masks: attn (B, K, size^2) -> (B, K, R^2) fp32."""
    if cfg.alpha_prior == "attention_gaussian":
        return attention_gaussian_prior(attn, size, cfg.resolution, cfg.gaussian_weight)
    fn = attention_prior if cfg.alpha_prior == "attention" else gaussian_prior
    return fn(attn, size, cfg.resolution)


@dataclass
class VideoOutput:
    """What the encoder produces for a clip."""

    slots: torch.Tensor  # (B, T, K, D) corrected slots
    recon: torch.Tensor  # (B, T, 3, R, R) in [-1, 1]
    alpha: torch.Tensor  # (B, T, K, R, R) per-slot masks, sum to 1 over K
    rgb: torch.Tensor  # (B, T, K, 3, R, R) per-slot colours
    attn: torch.Tensor  # (B, T, K, N) slot attention of the last iteration
    target: torch.Tensor  # (B, T, 3, R, R) the resized frames in [-1, 1]
    # the reconstruction under the Gaussian-mixture prior (only when asked for: see mixture_loss_weight)
    mixture_recon: torch.Tensor | None = None

    @property
    def carry(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the next clip of the same videos starts from (``SAVi.forward(state=...)``)."""
        return self.slots[:, -1], self.attn[:, -1]


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


def _noise_at(
    slots: torch.Tensor, t: int, given: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Frame t's standard normal noise, shaped like ``slots`` (B, K, D) and on their device:
    ``given[:, t]`` (B, T, K, D) when given, otherwise a draw from ``generator`` (the global
    generator when None)."""
    if given is not None:
        return given[:, t].to(slots.device)
    where = slots.device if generator is None else generator.device
    return torch.randn(slots.shape, generator=generator, device=where).to(slots.device)


class SAVi(nn.Module):
    """Slot attention for video: encoder, corrector, predictor, decoder, composed as in SAVi."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SlotEncoder(cfg)
        self.corrector = SlotAttention(
            cfg.slot_dim,
            cfg.slot_dim,
            iters=cfg.iters,
            mlp_hidden=cfg.mlp_hidden,
            implicit=cfg.implicit,
            update_norm=cfg.update_norm,
            update_mass=cfg.update_mass,
            gate_mass=cfg.gate_mass,
            cosine_scale=cfg.cosine_scale,
        )
        self.predictor = SlotPredictor(cfg.slot_dim, cfg.predictor_heads, cfg.predictor_hidden)
        self.decoder = BroadcastDecoder(cfg)

    def forward(
        self,
        frames: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        initial_slots: torch.Tensor | None = None,
        mixture: bool = False,
        refresh_noise: torch.Tensor | None = None,
    ) -> VideoOutput:
        """Encode and reconstruct a clip.

        frames: uint8 (B, T, H, W, 3). ``state``: the ``carry`` of the clip before, (corrected
        slots (B, K, D), attention (B, K, N)) of its last frame, to carry a video across
        clips; without it the first frame starts
        from ``initial_slots`` (B, K, D) or, by default, fresh draws from the shared Gaussian
        (``generator`` makes them reproducible) and gets ``iters_first`` iterations.
        ``mixture``: also reconstruct under the Gaussian-mixture prior (``mixture_recon``).
        With ``slot_noise`` or ``refresh_mass`` > 0, every frame after the first draws standard
        normal noise (B, K, D): ``refresh_noise[:, t]`` (B, T, K, D) when given, otherwise from
        ``generator`` (the global generator when None), whether or not a slot is redrawn. Its
        slots are moved by ``slot_noise`` times it (scaled by the shared Gaussian's spread), and
        redrawn slots are that Gaussian's draws from it.
        """
        cfg = self.cfg
        x = frames_to_input(frames, cfg.resolution)  # (B, T, 3, R, R)
        B, T = x.shape[:2]
        # T frames (B, N, D) by unbind, not feats[:, t]: each select's backward would fill a zero
        # tensor the size of all T frames, where unbind's stacks the T gradients once
        feats = self.encoder(x.flatten(0, 1)).unflatten(0, (B, T)).unbind(1)
        s = self.encoder.size
        locality = None
        if cfg.locality > 0:

            def locality(a: torch.Tensor) -> torch.Tensor:
                return self.locality_bias(log_density(a, s, s))

        if state is not None:
            if not (isinstance(state, tuple) and len(state) == 2):
                raise TypeError(
                    "SAVi: state must be the (slots, attention) pair of VideoOutput.carry, "
                    f"got {type(state).__name__}"
                )
            state, prev = state
        slots_t, attn_t = [], []
        for t in range(T):
            bias = None
            if t == 0 and state is None:
                slots = (
                    self.corrector.init_slots(B, cfg.num_slots, generator)
                    if initial_slots is None
                    else initial_slots
                )
                iters = cfg.iters_first
                if cfg.init_spread > 0:
                    with torch.no_grad():
                        bias = self.locality_bias(self.initial_log_density(slots, s))
            else:
                slots = self.predictor(state if t == 0 else slots)
                iters = cfg.iters
                if locality is not None:
                    with torch.no_grad():
                        bias = locality(prev.detach())
                if cfg.frame_noise:
                    noise = _noise_at(slots, t, refresh_noise, generator)
                    if cfg.slot_noise > 0:
                        # the spread without gradient: the noise must not teach the initial draws to shrink
                        spread = self.corrector.init_log_sigma.detach().exp()
                        slots = slots + (cfg.slot_noise * spread * noise).to(slots.dtype)
                    if cfg.refresh_mass > 0:
                        slots, bias = self._refresh(slots, prev, bias, noise)
            slots, attn = self.corrector(feats[t], slots, iters=iters, bias=bias, locality=locality)
            slots_t.append(slots)
            attn_t.append(attn)
            prev = attn
        slots = torch.stack(slots_t, dim=1)  # (B, T, K, D)
        attn = torch.stack(attn_t, dim=1)  # (B, T, K, N)
        a = attn.flatten(0, 1)
        prior = alpha_prior(cfg, a, s)
        aux = gaussian_prior(a, s, cfg.resolution) if mixture else None
        recon, alpha, rgb, mix = self.decoder(slots.flatten(0, 1), prior, aux)
        return VideoOutput(
            slots=slots,
            recon=recon.unflatten(0, (B, T)),
            alpha=alpha.unflatten(0, (B, T)),
            rgb=rgb.unflatten(0, (B, T)),
            attn=attn,
            target=x,
            mixture_recon=None if mix is None else mix.unflatten(0, (B, T)),
        )

    def locality_bias(self, log_density: torch.Tensor) -> torch.Tensor:
        """Slot attention's logit bias from a slot's log density over the inputs:
        locality * log(N + locality_floor), finite far from the slot (the floor)."""
        cfg = self.cfg
        floor = torch.tensor(math.log(cfg.locality_floor), device=log_density.device)
        return cfg.locality * torch.logaddexp(log_density, floor)

    def initial_places(self, slots: torch.Tensor) -> torch.Tensor:
        """Each initial slot's place (B, K, 2) in [0, 1]^2: the normal CDF of the first two
        coordinates of its standardised draw, (slot - mu) / sigma of the shared Gaussian, so
        draws from that Gaussian get places uniform over the frame, independent of each other."""
        c = self.corrector
        z = (slots.detach().float()[..., :2] - c.init_mu[:2].detach()) / c.init_log_sigma[:2].detach().exp()
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))

    def initial_log_density(self, slots: torch.Tensor, size: int) -> torch.Tensor:
        """log N(p; place_k, init_spread^2 I) at the size x size feature pixels: (B, K, size^2)."""
        var = self.cfg.init_spread**2
        grid = position_grid(size, slots.device)[:, :2]  # (N, 2)
        d2 = torch.cdist(self.initial_places(slots), grid[None]) ** 2  # (B, K, N)
        return -d2 / (2 * var) - math.log(2 * math.pi * var)

    def _refresh(
        self,
        slots: torch.Tensor,
        prev: torch.Tensor,
        bias: torch.Tensor | None,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Near-empty slots drawn afresh: slots (B, K, D), the previous frame's attention prev
        (B, K, N), its locality bias (B, K, N) or None, standard normal noise (B, K, D) -> slots,
        bias. A redrawn slot has no place yet: its bias is the locality floor
        at every pixel, as far from it as any pixel can be, so it wins pixels on content alone (with
        the bias of a uniform density instead, redrawn slots took the frame's edges from the
        background slot and split the background four ways: README, Encoder)."""
        cfg = self.cfg
        empty = prev.detach().float().sum(-1) < cfg.refresh_mass  # (B, K)
        if cfg.refresh_distance > 0:  # only copies: an empty slot near another empty slot
            s = slots.detach().float()
            near = torch.cdist(s, s) < cfg.refresh_distance  # (B, K, K)
            near &= empty[:, :, None] & empty[:, None, :]
            near &= ~torch.eye(s.shape[1], dtype=torch.bool, device=s.device)
            empty = near.any(dim=-1)  # (B, K)
        fresh = self.corrector.slots_from_noise(noise)  # (B, K, D)
        slots = torch.where(empty[..., None], fresh.to(slots.dtype), slots)
        if bias is not None:
            floor = self.locality_bias(bias.new_full((), -math.inf))  # no density: the floor alone
            bias = torch.where(empty[..., None], floor.to(bias.dtype), bias)
        return slots, bias

    @staticmethod
    def loss(out: VideoOutput) -> torch.Tensor:
        """Mean squared reconstruction error over pixels and channels."""
        return F.mse_loss(out.recon.float(), out.target.float())

    def training_loss(self, batch: torch.Tensor | dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The trainer's interface -> (loss, metrics). ``batch``: clips (B, T, H, W, 3) uint8, or
        {"frames": clips, "slot_noise": (B, K, D) standard normal noise of the initial slots,
        optionally "refresh_noise": (B, T, K, D) that of later frames (for the options slot_noise
        and refresh_mass)} (what the encoder's training draws, per item, from its checkpointed
        generator)."""
        device = self.encoder.pos.weight.device
        if isinstance(batch, dict):
            frames = batch["frames"].to(device, non_blocking=True)
            initial = self.corrector.slots_from_noise(batch["slot_noise"].to(device, non_blocking=True))
            refresh = batch.get("refresh_noise")
        else:
            frames, initial, refresh = batch.to(device, non_blocking=True), None, None
        cfg = self.cfg
        out = self(frames, initial_slots=initial, mixture=cfg.mixture_loss_weight > 0, refresh_noise=refresh)
        mse = self.loss(out)
        loss, metrics = mse, {"mse": float(mse.detach())}
        if cfg.mixture_loss_weight > 0:
            mix = F.mse_loss(out.mixture_recon.float(), out.target.float())
            loss = loss + cfg.mixture_loss_weight * mix
            metrics["mixture_mse"] = float(mix.detach())
        if cfg.alpha_entropy_weight > 0:
            ent = alpha_entropy(out.alpha)
            loss = loss + cfg.alpha_entropy_weight * ent
            metrics["alpha_entropy"] = float(ent.detach())
        return loss, metrics


def alpha_entropy(alpha: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the entropy (nats) of the alpha masks over slots: alpha
    (..., K, R, R), summing to 1 over K -> scalar fp32. 0 when every pixel belongs to one
    slot, log K when it is shared evenly by all."""
    a = alpha.float()
    return -(a * a.clamp_min(1e-12).log()).sum(-3).mean()


def slot_ids(alpha: torch.Tensor, dim: int) -> torch.Tensor:
    """The slot owning each pixel: the index of the largest alpha mask along ``dim`` (the first
    one on ties, as ``argmax``). ``max(dim).indices``, not ``argmax(dim)``: on CPU, torch's argmax
    over a dimension that is not the last is far slower, and with it the main job's slot
    extraction took 146-159 s against 116-122 s with this (``python benchmarks/extract_slots.py``,
    back to back; README, The main job)."""
    return alpha.max(dim=dim).indices


def segmentation(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Alpha masks (..., K, R, R) -> slot ids (..., H, W) at the frames' resolution.

    The masks are resized bilinearly before the argmax, so a model run at a lower resolution
    is scored on the full-resolution ground truth.
    """
    lead, (K, R, _) = alpha.shape[:-3], alpha.shape[-3:]
    a = alpha.reshape(-1, K, R, R).float()
    if (R, R) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return slot_ids(a, 1).reshape(*lead, *size)
