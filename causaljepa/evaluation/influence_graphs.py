"""Influence graphs: export, pictures, and the ``cjepa eval influence`` run.

Per window and per video, a networkx ``DiGraph`` (written as GraphML) and a torch_geometric
``Data``. Nodes are ``o<k>`` (object k of the video store) and, where the world has actions,
``action``. Every ordered pair of nodes has an edge source -> target carrying:

    weight              the influence under the chosen measure (``weight_measure``)
    <measure>           every measure's influence (and the baselines' scores, where computed)
    in_neighbourhood    the source is in the target's influence neighbourhood (under weight)
    in_top_k            the source is among the target's top-k sources
    contact, counterfactual   the truths (1, 0, or -1 = undetermined)
    attention_l<l>_h<h> window graphs: the attention of layer l, head h (the layer's own value
                        is the mean over its heads)
    time                the window's last visible frame (video graphs: ``times``, the last visible
                        frames of the windows where the edge is in the neighbourhood, comma
                        separated, and ``peak_time``, the window where its weight is largest)

Graph attributes: video_id, start, last_visible, end, stride (the frame numbers of the window),
weight_measure, checkpoint. Node attributes: object, slots (comma separated), label
("red metal cube"), x, y (world position at the last visible frame, where the store has
states), kind (object | action).

``<video_id>.pt`` holds the same graphs as torch_geometric ``Data`` dictionaries (tensors and
strings only, so ``torch.load(weights_only=True)`` reads it; ``load_pyg`` rebuilds the ``Data``);
a window's ``Data`` also has ``edge_heads`` (E, layers, heads).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from ..data.slot_store import SlotStore
from ..data.store import VideoStore
from ..io import atomic_output, save_figure, write_json_atomic, write_text_atomic
from .influence import (
    MEASURES,
    TRUTHS,
    ProbeConfig,
    VideoResult,
    WindowResult,
    best_measure,
    bootstrap_difference,
    neighbourhood,
    pair_arrays,
    probe_store,
    score,
    scored_names,
    window_results,
)
from .influence import (
    top_k as top_k_sources,
)

ACTION = "action"


def _label(vs: VideoStore, video: int, obj: int) -> str:
    if not vs.has("object_properties") or not vs.vocab:
        return f"object {obj}"
    c, s, m = (int(x) for x in vs.read("object_properties", video)[obj])
    if min(c, s, m) < 0:
        return f"object {obj}"
    return f"{vs.vocab['colors'][c]} {vs.vocab['materials'][m]} {vs.vocab['shapes'][s]}"


@dataclass(frozen=True)
class GraphMeta:
    video_id: str
    stride: int
    weight_measure: str
    checkpoint: str


def _add_nodes(G: nx.DiGraph, objects, slots_of, labels, positions, with_action: bool) -> list[str]:
    names = [f"o{o}" for o in objects]
    for m, o in enumerate(objects):
        attrs = {"object": int(o), "kind": "object", "label": labels[o]}
        if slots_of is not None:
            attrs["slots"] = ",".join(str(k) for k in slots_of[m])
        if positions is not None:
            attrs["x"], attrs["y"] = float(positions[m][0]), float(positions[m][1])
        G.add_node(names[m], **attrs)
    if with_action:
        G.add_node(ACTION, object=-1, kind="action", label="action")
    return names


def _incoming(measure: np.ndarray, action: np.ndarray | None, j: int) -> np.ndarray:
    """Target j's incoming influences: the objects (j's own entry 0), then the action node."""
    inc = measure[j].copy()
    inc[j] = 0.0
    return np.append(inc, action[j]) if action is not None else inc


def window_graph(r: WindowResult, meta: GraphMeta, labels: dict, positions, cfg: ProbeConfig) -> nx.DiGraph:
    """One window's influence graph (see the module docstring)."""
    w = r.window
    G = nx.DiGraph(
        video_id=meta.video_id,
        layers=r.heads.shape[0],
        heads=r.heads.shape[1],
        start=w.start,
        last_visible=w.last_visible,
        end=w.end,
        stride=meta.stride,
        weight_measure=meta.weight_measure,
        checkpoint=meta.checkpoint,
    )
    names = _add_nodes(G, w.objects, w.slots_of, labels, positions, r.action is not None)
    weight = r.measures[meta.weight_measure]
    act_w = None if r.action is None else r.action[meta.weight_measure]
    for j, tgt in enumerate(names):
        inc = _incoming(weight, act_w, j)
        hood, top = neighbourhood(inc, cfg.share), top_k_sources(inc, cfg.top_k)
        for i, src in enumerate(names):
            if i == j:
                continue
            attrs = {k: float(v[j, i]) for k, v in r.measures.items()}
            attrs |= {
                f"attention_l{layer}_h{h}": float(r.heads[layer, h, j, i])
                for layer in range(r.heads.shape[0])
                for h in range(r.heads.shape[1])
            }
            G.add_edge(
                src,
                tgt,
                weight=float(weight[j, i]),
                in_neighbourhood=bool(hood[i]),
                in_top_k=bool(top[i]),
                contact=int(r.contact[j, i]),
                counterfactual=int(r.counterfactual[j, i]),
                time=w.last_visible,
                **attrs,
            )
        if r.action is not None:
            G.add_edge(
                ACTION,
                tgt,
                weight=float(act_w[j]),
                in_neighbourhood=bool(hood[-1]),
                in_top_k=bool(top[-1]),
                contact=int(r.pushed[j]),
                counterfactual=int(r.pushed[j]),
                time=w.last_visible,
                **{k: float(v[j]) for k, v in r.action.items()},
            )
    return G


def video_graph(v: VideoResult, meta: GraphMeta, labels: dict, positions, cfg: ProbeConfig) -> nx.DiGraph:
    """A video's influence graph: window influences averaged over the windows where both
    nodes exist; edges only between nodes that shared a window."""
    G = nx.DiGraph(
        video_id=meta.video_id,
        start=v.windows[0].window.start,
        last_visible=v.windows[-1].window.last_visible,
        end=v.windows[-1].window.end,
        stride=meta.stride,
        weight_measure=meta.weight_measure,
        checkpoint=meta.checkpoint,
        windows=len(v.windows),
    )
    names = _add_nodes(G, v.objects, None, labels, positions, v.action is not None)
    idx = {o: m for m, o in enumerate(v.objects)}
    times: dict[tuple[int, int], list[int]] = {}
    peak: dict[tuple[int, int], tuple[float, int]] = {}
    for r in v.windows:
        sel = [idx[o] for o in r.window.objects]
        weight = r.measures[meta.weight_measure]
        act_w = None if r.action is None else r.action[meta.weight_measure]
        for j in range(len(sel)):
            inc = _incoming(weight, act_w, j)
            hood = neighbourhood(inc, cfg.share)
            sources = [(sel[i], inc[i], hood[i]) for i in range(len(sel)) if i != j]
            if act_w is not None:
                sources.append((-1, inc[-1], hood[-1]))  # -1: the action node
            for src, value, in_hood in sources:
                key = (src, sel[j])
                if in_hood:
                    times.setdefault(key, []).append(r.window.last_visible)
                if value > peak.get(key, (-math.inf, 0))[0]:
                    peak[key] = (float(value), r.window.last_visible)
    weight = v.measures[meta.weight_measure]
    for j, tgt in enumerate(names):
        for i, src in enumerate(names):
            if i == j or not np.isfinite(weight[j, i]):
                continue
            G.add_edge(
                src,
                tgt,
                weight=float(weight[j, i]),
                contact=int(v.contact[j, i]),
                counterfactual=int(v.counterfactual[j, i]),
                times=",".join(str(t) for t in times.get((i, j), [])),
                peak_time=peak.get((i, j), (0.0, -1))[1],
                **{k: float(m[j, i]) for k, m in v.measures.items()},
            )
        if v.action is not None:
            G.add_edge(
                ACTION,
                tgt,
                weight=float(v.action[meta.weight_measure][j]),
                contact=int(v.pushed[j]),
                counterfactual=int(v.pushed[j]),
                times=",".join(str(t) for t in times.get((-1, j), [])),
                peak_time=peak.get((-1, j), (0.0, -1))[1],
                **{k: float(m[j]) for k, m in v.action.items()},
            )
    return G


def to_pyg(G: nx.DiGraph, edge_fields: tuple[str, ...] = MEASURES):
    """A graph of ``window_graph`` / ``video_graph`` -> torch_geometric ``Data``:
    x (M, 2) node positions (NaN where unknown), node_object (M,) (-1 = the action node),
    edge_index (2, E), edge_weight (E,), edge_attr (E, len(edge_fields)) (NaN where an edge has
    no such value: the action node's edges have no baselines), edge_contact and
    edge_counterfactual (E,) int8, edge_time (E,) (the last visible frame, or the peak time),
    plus the graph attributes as strings and numbers."""
    from torch_geometric.data import Data

    nodes = list(G.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    edges = list(G.edges(data=True))
    x = torch.tensor(
        [[G.nodes[n].get("x", math.nan), G.nodes[n].get("y", math.nan)] for n in nodes], dtype=torch.float32
    ).reshape(len(nodes), 2)
    ei = torch.tensor([[pos[s] for s, _, _ in edges], [pos[t] for _, t, _ in edges]], dtype=torch.long)
    data = Data(
        x=x,
        edge_index=ei.reshape(2, len(edges)),
        edge_weight=torch.tensor([d["weight"] for _, _, d in edges], dtype=torch.float32),
        edge_attr=torch.tensor(
            [[d.get(k, math.nan) for k in edge_fields] for _, _, d in edges], dtype=torch.float32
        ).reshape(len(edges), len(edge_fields)),
        edge_contact=torch.tensor([d["contact"] for _, _, d in edges], dtype=torch.int8),
        edge_counterfactual=torch.tensor([d["counterfactual"] for _, _, d in edges], dtype=torch.int8),
        edge_time=torch.tensor(
            [d.get("time", d.get("peak_time", -1)) for _, _, d in edges], dtype=torch.long
        ),
        node_object=torch.tensor([G.nodes[n]["object"] for n in nodes], dtype=torch.long),
    )
    if "layers" in G.graph:  # a window graph: every layer's and head's attention
        L, h = G.graph["layers"], G.graph["heads"]
        data.edge_heads = torch.tensor(
            [
                [[d.get(f"attention_l{a}_h{b}", math.nan) for b in range(h)] for a in range(L)]
                for *_, d in edges
            ],
            dtype=torch.float32,
        ).reshape(len(edges), L, h)
    data.edge_fields = list(edge_fields)
    for k, v in G.graph.items():
        data[k] = v
    return data


def save_pyg(path: str | os.PathLike, graphs: dict[str, list]) -> Path:
    """{name: [Data, ...]} -> one file of plain dictionaries, written atomically."""
    with atomic_output(path) as tmp:
        torch.save({k: [d.to_dict() for d in v] for k, v in graphs.items()}, tmp)
    return Path(path)


def load_pyg(path: str | os.PathLike) -> dict[str, list]:
    """The file of ``save_pyg`` -> {name: [Data, ...]} ("windows" and "video")."""
    from torch_geometric.data import Data

    raw = torch.load(path, weights_only=True)
    return {k: [Data.from_dict(d) for d in v] for k, v in raw.items()}


def write_graphml(G: nx.DiGraph, path: str | os.PathLike) -> Path:
    with atomic_output(path) as tmp:
        nx.write_graphml(G, tmp)
    return Path(path)


# pictures ----------------------------------------------------------------------------------
VIEW = (-3.0, 3.0, -2.0, 2.0)  # clevrer_sim's camera: x in [-3, 3], y in [-2, 2]


def _draw(ax, frame: np.ndarray, G: nx.DiGraph, title: str, truth: str = "counterfactual") -> None:
    """The graph over the frame: nodes at the objects' positions, an arrow source -> target
    for each edge in the target's neighbourhood, width by weight (relative to the panel's
    largest), green where ``truth`` says the edge is real, red where it says not, gray where
    undetermined; dotted black: a true edge the neighbourhood misses."""
    ax.imshow(frame, extent=VIEW, interpolation="nearest")
    ax.set_xlim(VIEW[0], VIEW[1])
    ax.set_ylim(VIEW[2], VIEW[3])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    xy = {}
    for n, d in G.nodes(data=True):
        if d["kind"] == "action":
            xy[n] = (VIEW[0] + 0.45, VIEW[2] + 0.3)
            ax.text(*xy[n], "action", fontsize=6, color="white", ha="center", va="center",
                    bbox={"boxstyle": "round", "fc": "black", "alpha": 0.6})  # fmt: skip
        elif "x" in d:  # an object outside the view sits on the border, drawn as a square
            x, y = (
                float(np.clip(d["x"], VIEW[0] + 0.1, VIEW[1] - 0.1)),
                float(np.clip(d["y"], VIEW[2] + 0.1, VIEW[3] - 0.1)),
            )
            xy[n] = (x, y)
            ax.plot(x, y, "o" if (x, y) == (d["x"], d["y"]) else "s", ms=4, mfc="white", mec="black", mew=0.8)
            ax.text(x + 0.12, y + 0.12, n, fontsize=6, color="white", clip_on=True,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "black", "alpha": 0.5})  # fmt: skip
    top = max([d["weight"] for *_, d in G.edges(data=True) if d.get("in_neighbourhood", True)] or [0.0])
    colors = {1: "#2ca02c", 0: "#d62728", -1: "0.6"}
    for s, t, d in G.edges(data=True):
        if s not in xy or t not in xy:
            continue
        shown = d.get("in_neighbourhood", bool(d.get("times")))
        if shown and top > 0:  # the action node's edges are dashed
            ax.annotate("", xy=xy[t], xytext=xy[s], arrowprops={
                "arrowstyle": "-|>", "color": colors[int(d[truth])], "alpha": 0.85,
                "ls": "--" if s == ACTION else "-",
                "lw": 0.5 + 3.5 * d["weight"] / top, "shrinkA": 4, "shrinkB": 4,
                "connectionstyle": "arc3,rad=0.15"})  # fmt: skip
        elif d[truth] == 1:
            ax.annotate("", xy=xy[t], xytext=xy[s], arrowprops={
                "arrowstyle": "-|>", "color": "black", "ls": ":", "lw": 0.8, "shrinkA": 4, "shrinkB": 4,
                "connectionstyle": "arc3,rad=0.15"})  # fmt: skip


def draw_video(
    vs: VideoStore,
    video: VideoResult,
    graphs: list[nx.DiGraph],
    vgraph: nx.DiGraph,
    out,
    max_windows: int = 7,
) -> Path:
    """A PNG: up to ``max_windows`` window graphs over their last visible frame, then the video
    graph over the last window's frame. Objects outside the view are drawn as squares on its
    border."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    pick = np.unique(np.linspace(0, len(graphs) - 1, min(max_windows, len(graphs))).round().astype(int))
    panels = [(graphs[k], graphs[k].graph["last_visible"]) for k in pick]
    panels.append((vgraph, vgraph.graph["last_visible"]))
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 2.6 * rows + 0.8), squeeze=False, layout="constrained"
    )
    vid = vgraph.graph["video_id"]
    times = sorted({t for _, t in panels})
    frames = dict(zip(times, vs.read("frames", video.video, times=times), strict=True))
    for ax, (G, t) in zip(axes.flat, panels, strict=False):
        frame = frames[t]
        if G is vgraph:
            title = f"whole video ({len(video.windows)} windows)"
        else:
            title = f"frames {G.graph['start']}-{G.graph['end']}, seen to {t}"
        _draw(ax, frame, G, title)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [
        Line2D([], [], color="#2ca02c", lw=2, label="in neighbourhood, true (counterfactual)"),
        Line2D([], [], color="#d62728", lw=2, label="in neighbourhood, not true"),
        Line2D([], [], color="0.6", lw=2, label="in neighbourhood, undetermined"),
        Line2D([], [], color="black", ls=":", lw=1, label="true, missed"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(
        f"{vid}: each object's influence neighbourhood ({vgraph.graph['weight_measure']}), "
        "arrow width = influence, dashed = from the action node",
        fontsize=9,
    )
    return save_figure(fig, out, dpi=110)


# the run -----------------------------------------------------------------------------------
def run_name(extra: dict) -> str:
    """A predictor's short name from its checkpoint: <slots>_<masking>."""
    from ..masking import MaskConfig

    return f"{extra.get('slots', 'slots')}_{MaskConfig(**extra['masking']).name}"


def export_video(
    vs: VideoStore,
    video: VideoResult,
    meta: GraphMeta,
    cfg: ProbeConfig,
    out: Path,
    picture: bool,
) -> dict:
    """GraphML and PyG files of one video's windows and of the video; a PNG if ``picture``."""
    labels = {o: _label(vs, video.video, o) for o in video.objects}

    def positions(objects, t):
        return None if video.truth.position is None else video.truth.position[t, objects]

    graphs = [
        window_graph(r, meta, labels, positions(r.window.objects, r.window.last_visible), cfg)
        for r in video.windows
    ]
    vgraph = video_graph(
        video, meta, labels, positions(video.objects, video.windows[-1].window.last_visible), cfg
    )
    folder = out / "graphs" / meta.video_id
    files = [write_graphml(G, folder / f"window_{G.graph['start']:04d}.graphml") for G in graphs]
    files.append(write_graphml(vgraph, folder / "video.graphml"))
    fields = tuple(scored_names(video.windows))
    files.append(
        save_pyg(
            folder / "pyg.pt",
            {"windows": [to_pyg(G, fields) for G in graphs], "video": [to_pyg(vgraph, fields)]},
        )
    )
    if picture:
        files.append(draw_video(vs, video, graphs, vgraph, out / f"influence_{meta.video_id}.png"))
    return {"graphs": len(graphs) + 1, "files": [str(f) for f in files]}


@dataclass(frozen=True)
class RunOptions:
    """How a probe run weighs, draws and computes (the command's top-level keys)."""

    weight: str = "intervention_remove"  # the measure behind edge weights, neighbourhoods and pictures
    pictures: int = 4  # videos drawn as PNG per predictor
    seed: int = 0  # the gradient probe's random projections
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.weight not in MEASURES:
            raise ValueError(f"weight={self.weight!r} is not a measure; choose one of {list(MEASURES)}")
        if self.pictures < 0:
            raise ValueError(f"pictures must be >= 0, got {self.pictures}")


def probe_checkpoint(
    checkpoint: str | os.PathLike,
    model,
    ckpt: dict,
    slot_store: str | os.PathLike,
    video_store: str | os.PathLike,
    out: str | os.PathLike,
    cfg: ProbeConfig,
    opts: RunOptions,
) -> dict:
    """Probe one predictor (``model`` and its checkpoint dict ``ckpt``, loaded from
    ``checkpoint``) on one slot store; write scores.json, pairs.npz (every scored pair:
    ``<windows|videos>.<truth>.<label|video|measure>``), graphs/ and PNGs under ``out``.
    A finished run (its scores.json written for the same checkpoint, stores and settings) is
    read back, not repeated."""
    from tqdm import tqdm

    from ..training.checkpoint import file_hash
    from ..training.predictor import check_same_encoder

    out = Path(out)
    fingerprint = {
        "checkpoint": file_hash(checkpoint),
        "slot_store": str(slot_store),
        "video_store": str(video_store),
        "probe": cfg.to_dict(),
        "weight": opts.weight,
        "pictures": opts.pictures,
        "seed": opts.seed,
    }
    done = out / "scores.json"
    if done.exists():
        old = json.loads(done.read_text())
        if old.get("fingerprint") == fingerprint:
            return old
    stride = int(ckpt["extra"]["windows"]["stride"])
    with SlotStore(slot_store) as store, VideoStore(video_store) as vs:
        check_same_encoder(store, ckpt)
        videos = probe_store(model, store, vs, stride=stride, cfg=cfg, seed=opts.seed, progress=opts.progress)
        exported = 0
        for n, video in enumerate(tqdm(videos, desc="export", unit="video", disable=not opts.progress)):
            meta = GraphMeta(store.video_ids[video.video], stride, opts.weight, str(checkpoint))
            exported += export_video(vs, video, meta, cfg, out, picture=n < opts.pictures)["graphs"]
    windows = window_results(videos)
    pairs = {
        f"{level}.{k}": v
        for level, rs in (("windows", windows), ("videos", videos))
        for k, v in pair_arrays(rs).items()
    }
    with atomic_output(out / "pairs.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **pairs)
    result = {
        "checkpoint": str(checkpoint),
        "name": run_name(ckpt["extra"]),
        "slots": ckpt["extra"].get("slots"),
        "masking": ckpt["extra"].get("masking"),
        "windows": len(windows),
        "videos": len(videos),
        "graphs": exported,
        "scores": {"windows": score(windows), "videos": score(videos)},
        "fingerprint": fingerprint,
    }
    write_json_atomic(done, result)
    return result


def markdown(results: list[dict]) -> str:
    """The AUROC / AP table: rows (predictor, measure), columns truth x (AUROC, AP), for the
    window-level and the video-level scores."""
    lines = []
    for level in ("windows", "videos"):
        lines += [f"## per {level[:-1]}", ""]
        first = results[0]["scores"][level]
        head = "| predictor | measure |"
        rule = "|---|---|"
        for truth in TRUTHS:
            t = first[truth]
            extra = f", {t['undetermined']} undet." if "undetermined" in t else ""
            head += f" {truth} AUROC | {truth} AP |"
            rule += "---|---|"
            lines.append(f"- {truth}: {t['positives']} true and {t['negatives']} false pairs{extra}")
        lines += ["", head, rule]
        for r in results:
            best, _ = best_measure(r["scores"][level])
            for k in r["scores"][level][TRUTHS[0]]["measures"]:
                tag = (" (baseline)" if k not in MEASURES else "") + (" **best**" if k == best else "")
                row = f"| {r['name']} | {k}{tag} |"
                for truth in TRUTHS:
                    m = r["scores"][level][truth]["measures"][k]
                    row += f" {m['auroc']:.3f} | {m['ap']:.3f} |"
                lines.append(row)
        action = [r for r in results if "action" in r["scores"][level]]
        if action:
            lines += [
                "",
                "Action node against the pushes:",
                "",
                "| predictor | measure | AUROC | AP |",
                "|---|---|---|---|",
            ]
            for r in action:
                for k, m in r["scores"][level]["action"]["measures"].items():
                    lines.append(f"| {r['name']} | {k} | {m['auroc']:.3f} | {m['ap']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def comparisons(results: list[dict], out: Path, n: int = 1000) -> list[dict]:
    """Each predictor with masking against the one without on the same slots: the AUROC
    difference of every measure against every truth, per window and per video (``level``),
    with its 95 % interval over videos (``bootstrap_difference``); only where both were
    scored on the same pairs."""
    rows = []
    for base in [r for r in results if (r.get("masking") or {}).get("strategy") == "none"]:
        for other in results:
            if other is base or other.get("slots") != base.get("slots"):
                continue
            with (
                np.load(out / base["name"] / "pairs.npz") as fa,
                np.load(out / other["name"] / "pairs.npz") as fb,
            ):
                arrays = [({k: f[k] for k in f.files}) for f in (fa, fb)]
            for level in ("windows", "videos"):
                a, b = (
                    {k[len(level) + 1 :]: v for k, v in x.items() if k.startswith(level + ".")}
                    for x in arrays
                )
                for truth in TRUTHS:
                    for measure in MEASURES:
                        d = bootstrap_difference(a, b, truth, measure, n=n)
                        if d is not None:
                            rows.append(
                                {
                                    "base": base["name"],
                                    "other": other["name"],
                                    "level": level,
                                    "truth": truth,
                                    "measure": measure,
                                    **d,
                                }
                            )
    return rows


def masking_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [
        "## does masking make the influence more causal?",
        "",
        "AUROC with masking minus AUROC without, on the same pairs (per window, and per video with the "
        f"influences averaged over its windows); 95 % interval from {rows[0]['resamples']} resamplings "
        "of the videos.",
        "",
        "| with | without | level | truth | measure | difference | 95 % interval |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['other']} | {r['base']} | {r['level']} | {r['truth']} | {r['measure']} | "
            f"{r['difference']:+.3f} | [{r['low']:+.3f}, {r['high']:+.3f}] |"
        )
    return "\n".join(lines) + "\n"


def plot_scores(results: list[dict], out) -> Path:
    """Window-level AUROC per measure, one bar per predictor, a panel per truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["scores"]["windows"][TRUTHS[0]]["measures"])
    fig, axes = plt.subplots(1, len(TRUTHS), figsize=(6 * len(TRUTHS), 3.6), squeeze=False)
    width = 0.8 / len(results)
    for ax, truth in zip(axes[0], TRUTHS, strict=True):
        for n, r in enumerate(results):
            vals = [r["scores"]["windows"][truth]["measures"][k]["auroc"] for k in names]
            ax.bar(np.arange(len(names)) + n * width, vals, width, label=r["name"])
        ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2)
        ax.set_xticklabels([k.replace("_", "\n") for k in names], fontsize=7)
        ax.set_ylim(0.3, 1.0)
        ax.set_ylabel("AUROC (windows)")
        ax.set_title(f"against the {truth} truth", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def evaluate_influence(
    checkpoints: list[str],
    data_root: str | os.PathLike,
    split: str,
    slots: str | None,
    out: str | os.PathLike,
    cfg: ProbeConfig,
    opts: RunOptions,
) -> dict:
    """Probe each predictor on the slots of ``<data_root>/<split>.h5`` (``slots``: learned,
    oracle or a directory; None: the kind each predictor was trained on, under ``data_root``);
    write <out>/<name>/... per predictor and the combined scores.json, scores.md and scores.png."""
    from ..training.predictor import load_predictor, resolve_slots

    out, root = Path(out), Path(data_root)
    video_store = root / f"{split}.h5"
    results, seen = [], set()
    for checkpoint in checkpoints:
        model, ckpt = load_predictor(checkpoint, opts.device)
        kind = slots or ckpt["extra"].get("slots")
        if kind is None:
            raise ValueError(f"{checkpoint} does not say which slots it was trained on; give slots=")
        slot_store = resolve_slots(root, kind) / f"{split}.h5"
        if not slot_store.exists():
            raise FileNotFoundError(
                f"{slot_store} does not exist: the predictor {checkpoint} needs its {kind} slots of "
                f"{video_store} (cjepa oracle-slots, or cjepa extract-slots ... counterfactuals=true for the "
                "counterfactual truth); or give slots=DIR"
            )
        name = run_name(ckpt["extra"])
        while name in seen:
            name += "+"
        seen.add(name)
        r = probe_checkpoint(checkpoint, model, ckpt, slot_store, video_store, out / name, cfg, opts)
        r["name"] = name
        results.append(r)
    masking = comparisons(results, out)
    summary = {
        "video_store": str(video_store),
        "probe": cfg.to_dict(),
        "weight": opts.weight,
        "seed": opts.seed,
        "results": [{k: v for k, v in r.items() if k != "fingerprint"} for r in results],
        "masking_effect": masking,
    }
    write_json_atomic(out / "scores.json", summary)
    text = f"# Influence probes against the truth ({video_store.name})\n\n" + markdown(results)
    text += "\n" + masking_markdown(masking)
    write_text_atomic(out / "scores.md", text)
    png = plot_scores(results, out / "scores.png")
    return {"json": out / "scores.json", "markdown": out / "scores.md", "png": png, "results": results}
