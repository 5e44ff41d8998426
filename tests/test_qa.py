"""CLEVRER QA: vocabulary, examples, metrics, the reader, grounding, the eval commands."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import oracle_world

from causaljepa import cli
from causaljepa.data.questions import (
    ANSWERS,
    QUESTION_TYPES,
    QuestionFileError,
    attribute_ids,
    load_questions,
)
from causaljepa.evaluation.ablation import (
    ablation_markdown,
    count_line,
    masking_config,
    plot_ablation,
    qa_dir_name,
    sampling_error,
    summarize,
)
from causaljepa.evaluation.clevrer_qa import fit_readout, ground, readout_accuracy
from causaljepa.evaluation.qa import (
    EXTRA_CF,
    EXTRA_FUTURE,
    EXTRA_NONE,
    GROUND_WIDTH,
    QAReader,
    ReaderConfig,
    VisualParts,
    Vocabulary,
    accuracy_table,
    build_examples,
    extra_groups,
    markdown_table,
    mention_weights,
    mentions,
    named_object,
    predict,
    video_index,
    words,
)


def _desc(qid, text, answer, sub="query_color"):
    return {
        "question_id": qid,
        "question": text,
        "question_type": "descriptive",
        "question_subtype": sub,
        "answer": answer,
    }


def _mc(qid, qtype, text, choices, program=None):
    q = {
        "question_id": qid,
        "question": text,
        "question_type": qtype,
        "choices": [{"choice_id": i, "choice": c, "answer": a} for i, (c, a) in enumerate(choices)],
    }
    if program is not None:
        q["program"] = program
    return q


VIDEOS = [
    {
        "scene_index": 7,
        "video_filename": "video_00007.mp4",
        "questions": [
            _desc(0, "What color is the cube?", "red"),
            _mc(
                1,
                "predictive",
                "What will happen next?",
                [("The cube exits the scene", "correct"), ("The sphere exits the scene", "wrong")],
            ),
            _mc(
                2,
                "counterfactual",
                "Which event will happen if the red cube is removed?",
                [
                    ("The sphere collides with the cylinder", "wrong"),
                    ("The gray sphere collides with it", "wrong"),
                    ("Nothing", "correct"),
                ],
                program=[
                    "objects",
                    "red",
                    "filter_color",
                    "cube",
                    "filter_shape",
                    "unique",
                    "get_counterfact",
                ],
            ),
        ],
    }
]


def test_vocabulary_and_unknown_words():
    v = Vocabulary.from_questions(VIDEOS)
    assert v.tokens[:2] == ["[PAD]", "[UNK]"] and "cube" in v.tokens and "collides" in v.tokens
    ids = v.encode("What color is the zebra?")
    assert ids[-1] == 1 and ids[0] == v.index["what"]
    with pytest.raises(ValueError, match="lists each word once"):
        Vocabulary(["[PAD]", "[UNK]", "a", "a"])


def test_named_object_from_program_or_text():
    assert named_object(VIDEOS[0]["questions"][2]) == {"color": "red", "shape": "cube"}
    q = {"question_id": 3, "question": "Which event will happen if the metal sphere is removed?"}
    assert named_object(q) == {"material": "metal", "shape": "sphere"}
    with pytest.raises(QuestionFileError, match="cannot tell which object"):
        named_object({"question_id": 4, "question": "What if nothing happened?"})


def test_examples_one_row_per_question_or_choice():
    v = Vocabulary.from_questions(VIDEOS)
    ex_a, cf_a = build_examples(VIDEOS, [3], v, 20, counterfactual_extra=False)
    ex_b, cf_b = build_examples(VIDEOS, [3], v, 20, counterfactual_extra=True)
    assert len(ex_a) == 1 + 2 + 3 and ex_a.video.tolist() == [3] * 6
    assert ex_a.question.tolist() == [0, 1, 1, 2, 2, 2]
    assert ex_a.target.tolist() == [ANSWERS.index("red"), 1, 0, 0, 0, 1]
    assert ex_a.is_choice.tolist() == [False] + [True] * 5
    assert ex_a.extra.tolist() == [EXTRA_NONE] + [EXTRA_FUTURE] * 2 + [EXTRA_NONE] * 3
    assert ex_b.extra.tolist()[3:] == [EXTRA_CF] * 3 and ex_b.cf_index.tolist()[3:] == [0, 0, 0]
    assert cf_a.video == [] and cf_b.video == [3] and cf_b.attrs == [{"color": "red", "shape": "cube"}]
    # question words then choice words, padded with 0
    n_q = len(v.encode("What will happen next?"))
    assert ex_a.word_types[1, :n_q].eq(1).all() and ex_a.word_types[1, n_q].item() == 2
    assert ex_a.words[0, 5:].eq(0).all()
    with pytest.raises(ValueError, match=r"reader\.max_words=4"):
        build_examples(VIDEOS, [3], v, 4, counterfactual_extra=False)


def test_mentions_name_objects_by_attributes():
    ws = words(
        "Which event will happen if the red rubber cube is removed? The gray object collides with the sphere"
    )
    got = [(" ".join(ws[a:b]), m) for a, b, m in mentions(ws)]
    assert got == [
        ("red rubber cube", {"color": "red", "material": "rubber", "shape": "cube"}),
        ("gray object", {"color": "gray"}),
        ("sphere", {"shape": "sphere"}),
    ]
    assert attribute_ids(got[0][1]) == [1, 0, 0] and attribute_ids({"shape": "sphere"}) == [-1, 1, -1]
    # plural shapes name a kind; a repeated attribute starts a new mention; bare "object" names none
    ws = words("How many metal cylinders are there? The red blue objects; what object enters")
    assert [m for _, _, m in mentions(ws)] == [
        {"material": "metal", "shape": "cylinder"},
        {"color": "red"},
        {"color": "blue"},
    ]


def test_examples_mark_the_words_and_values_of_each_mention():
    v = Vocabulary.from_questions(VIDEOS)
    ex, _ = build_examples(VIDEOS, [0], v, 20, counterfactual_extra=False, max_mentions=3)
    red, cube, sphere, cyl, gray = 1, 0, 1, 2, 0
    # row 3: "... if the red cube is removed?" + "The sphere collides with the cylinder"
    q = words("Which event will happen if the red cube is removed?")
    assert ex.word_mention[3, : len(q)].tolist() == [0] * 6 + [1, 1] + [0] * 2
    assert ex.word_mention[3, len(q) :].tolist()[:6] == [0, 2, 0, 0, 0, 3]
    assert ex.named[3].tolist() == [[red, cube, -1], [-1, sphere, -1], [-1, cyl, -1]]
    assert ex.mention_valid[3].tolist() == [True, True, True]
    assert ex.named[4].tolist()[1] == [gray, sphere, -1]  # "The gray sphere collides with it"
    assert ex.mention_valid[5].tolist() == [True, False, False]  # "Nothing"
    # mentions count in reading order: the predictive question names none, its choice's cube is the first
    assert ex.mention_valid[1].tolist() == [True, False, False] and ex.named[1, 0].tolist() == [-1, cube, -1]
    with pytest.raises(ValueError, match=r"names 3 objects.*reader\.max_mentions=2"):
        build_examples(VIDEOS, [0], v, 20, counterfactual_extra=False, max_mentions=2)


def test_words_outside_the_vocabulary_are_an_error_or_unk(capsys):
    v = Vocabulary.from_questions(VIDEOS[:1])
    other = [
        {**VIDEOS[0], "questions": [{**VIDEOS[0]["questions"][0], "question": "Wie viele Würfel gibt es?"}]}
    ]
    with pytest.raises(QuestionFileError, match=r"val\.json: 1 question\(s\) use words outside.*'viele'"):
        build_examples(other, [0], v, 20, counterfactual_extra=False, source="val.json")
    ex, _ = build_examples(
        other, [0], v, 20, counterfactual_extra=False, unknown_words="unk", source="val.json"
    )
    assert ex.words[0, :7].tolist() == [1] * 6 + [0]  # wie viele w rfel gibt es: [UNK] each, then padding
    assert (
        "val.json: 1 question(s) have words outside the vocabulary; read as [UNK]" in capsys.readouterr().out
    )
    with pytest.raises(ValueError, match="unknown_words must be one of"):
        build_examples(other, [0], v, 20, counterfactual_extra=False, unknown_words="skip")


def test_video_index_names_the_missing_video():
    assert video_index(["video_00001", "video_00007"], VIDEOS, "q.json") == [1]
    with pytest.raises(KeyError, match="video_00007"):
        video_index(["video_00001"], VIDEOS, "q.json")


def test_accuracy_table_per_option_and_per_question():
    v = Vocabulary.from_questions(VIDEOS)
    ex, _ = build_examples(VIDEOS * 2, [0, 1], v, 20, counterfactual_extra=False)
    pred = ex.target.clone()
    pred[1] = 1 - pred[1]  # video 0: one predictive choice wrong
    pred[6] = (pred[6] + 1) % len(ANSWERS)  # video 1: descriptive wrong
    t = accuracy_table(ex, pred)
    assert t["descriptive"] == 50.0
    assert t["predictive_option"] == 75.0 and t["predictive_question"] == 50.0
    assert t["counterfactual_option"] == 100.0 and t["counterfactual_question"] == 100.0
    assert t["all_question"] == pytest.approx(100 * 4 / 6)
    md = markdown_table({"x": t, "y": {"descriptive": (50.0, 2.5)}})
    assert "| x | 50.0 |" in md and "50.0 ± 2.5" in md and "counterfactual q" in md


def _parts(N=2, To=3, K=4, D=5, Tf=2, M=1):
    g = torch.Generator().manual_seed(0)
    return VisualParts(
        torch.randn(N, To, K, D, generator=g),
        torch.randn(N, Tf, K, D, generator=g),
        torch.randn(M, To, K, D, generator=g),
    )


def test_reader_is_slot_permutation_equivariant_and_ignores_padding():
    v = Vocabulary.from_questions(VIDEOS)
    ex, _ = build_examples(VIDEOS, [1], v, 20, counterfactual_extra=True)
    parts = _parts()
    torch.manual_seed(0)
    model = QAReader(ReaderConfig(dim=16, heads=2, mlp_hidden=16, max_words=20), len(v), 5).eval()
    b = ex.take(torch.arange(len(ex)))
    b.update(parts.batch(b))
    a1, c1 = model(b)
    perm = torch.tensor([2, 0, 3, 1])
    bp = dict(b, observed=b["observed"][:, :, perm], extra=b["extra"][:, :, perm])
    a2, c2 = model(bp)
    torch.testing.assert_close(a1, a2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=1e-5)
    # with the readout's marks of the mentioned objects, permuted with their slots
    g = torch.Generator().manual_seed(1)
    logp = {f"{k}_logp": torch.randn(*getattr(parts, k).shape[:3], GROUND_WIDTH, generator=g).clamp(max=0)
            for k in ("observed", "future", "counterfactual")}  # fmt: skip
    marked = VisualParts(parts.observed, parts.future, parts.counterfactual, **logp)
    bm = ex.take(torch.arange(len(ex)))
    bm.update(marked.batch(bm))
    assert bm["observed_ground"].shape == (len(ex), 3, 4, 4) and bm["extra_ground"].shape == (
        len(ex),
        3,
        4,
        4,
    )
    _, cm = model(bm)
    assert not torch.allclose(cm, c1)  # the marks reach the answer
    bmp = dict(bm, observed=bm["observed"][:, :, perm], extra=bm["extra"][:, :, perm])
    bmp.update(observed_ground=bm["observed_ground"][:, :, perm], extra_ground=bm["extra_ground"][:, :, perm])
    torch.testing.assert_close(model(bmp)[1], cm, atol=1e-5, rtol=1e-5)
    # a mark moved to another slot changes the answer: the reader ties mentions to slots
    moved = dict(bm, observed_ground=bm["observed_ground"].roll(1, dims=2))
    assert not torch.allclose(model(moved)[1], cm)
    # a descriptive question reads no extra part: garbage in its padded extra slots changes nothing
    b0 = ex.take(torch.tensor([0]))
    b0.update(parts.batch(b0))
    base = model(b0)[0]
    b0["extra"] = torch.randn_like(b0["extra"]) * 100
    torch.testing.assert_close(model(b0)[0], base)
    # the extra part matters where it is valid
    bc = ex.take(torch.tensor([3]))
    bc.update(parts.batch(bc))
    before = model(bc)[1]
    bc["extra"] = bc["extra"] + torch.randn_like(bc["extra"])
    assert not torch.allclose(model(bc)[1], before)


def test_predict_batches_by_extra_part_and_keeps_row_order():
    v = Vocabulary.from_questions(VIDEOS)
    ex, _ = build_examples(VIDEOS * 2, [0, 1], v, 20, counterfactual_extra=True)
    groups = extra_groups(ex)
    assert [ex.extra[g].unique().tolist() for g in groups] == [[EXTRA_NONE], [EXTRA_FUTURE], [EXTRA_CF]]
    assert sorted(torch.cat(groups).tolist()) == list(range(len(ex)))
    parts = _parts(M=2)
    torch.manual_seed(0)
    model = QAReader(ReaderConfig(dim=16, heads=2, mlp_hidden=16, max_words=20), len(v), 5).eval()
    got = predict(model, ex, parts, batch_size=2)
    one = []
    for i in range(len(ex)):  # one row at a time: no padding of another row's part
        b = ex.take(torch.tensor([i]))
        b.update(parts.batch(b))
        assert b["extra"].shape[1] == {EXTRA_NONE: 0, EXTRA_FUTURE: 2, EXTRA_CF: 3}[int(ex.extra[i])]
        a, c = model(b)
        one.append(int(c[0] > 0) if ex.is_choice[i] else int(a[0].argmax()))
    assert got.tolist() == one


def test_reader_learns_a_slot_dependent_answer(one_thread):
    """The answer is the colour coded in the only non-zero slot: the reader must read slots."""
    g = torch.Generator().manual_seed(0)
    v = Vocabulary.from_questions(VIDEOS)
    colors = [ANSWERS.index(c) for c in ("red", "blue", "green")]
    n = 96
    which = torch.randint(0, 3, (n,), generator=g)
    obs = torch.zeros(n, 2, 3, 6)
    obs[torch.arange(n), :, torch.randint(0, 3, (n,), generator=g), which] = 1.0
    parts = VisualParts(obs, None, None)
    words = torch.tensor(v.encode("What color is the cube?") + [0] * 3).expand(n, -1)
    batch = {
        "words": words,
        "word_types": (words > 0).long(),
        "video": torch.arange(n),
        "extra": torch.zeros(n, dtype=torch.long),
        "cf_index": torch.full((n,), -1),
        "target": torch.tensor(colors)[which],
        "is_choice": torch.zeros(n, dtype=torch.bool),
    }
    batch.update(parts.batch(batch))
    torch.manual_seed(0)
    model = QAReader(ReaderConfig(dim=32, heads=2, mlp_hidden=32, dropout=0.0, max_words=8), len(v), 6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss, metrics = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["accuracy"] > 0.95, metrics


def test_grounding_finds_the_described_slot(one_thread):
    g = torch.Generator().manual_seed(1)
    props = torch.stack([torch.randint(0, n, (400,), generator=g) for n in (8, 3, 2)], dim=1)  # (M, 3)

    def feats(p):  # one-hot attributes + noise, in a 16-dim slot; a row of -1 is a slot of no object
        x = torch.cat(
            [torch.nn.functional.one_hot(p[:, j].clamp(min=0), n).float() for j, n in enumerate((8, 3, 2))], 1
        )
        x = x * (p[:, :1] >= 0)
        return torch.cat([x, 0.1 * torch.randn(len(p), 3, generator=g)], 1)

    y = torch.cat([props, torch.full((100, 3), -1)])  # 100 slots cover no object
    readout = fit_readout(feats(y), y, steps=200)
    acc = readout_accuracy(readout, feats(y), y)
    assert set(acc) == {"color", "shape", "material", "object"} and min(acc.values()) > 0.99, acc
    # a video of 4 slots: red cube rubber, blue sphere metal, red sphere rubber, no object
    objs = torch.tensor([[1, 0, 0], [2, 1, 1], [1, 1, 0], [-1, -1, -1]])
    slots = feats(objs)[None, None].expand(2, 2, 4, 16)  # (B=2, T=2, K=4, D)
    got = ground(readout, slots, [{"color": "red", "shape": "sphere"}, {"material": "metal"}])
    assert got.tolist() == [2, 1]
    # the reader's marks: p(object) x p(named values), per slot, for each mention
    logp = readout.ground_logp(slots)
    assert logp.shape == (2, 2, 4, GROUND_WIDTH)
    named = torch.tensor([[[1, 1, -1], [-1, -1, 1]], [[-1, 0, -1], [-1, -1, -1]]])  # red sphere, metal; cube
    w = mention_weights(logp, named, named.ge(0).any(-1))
    assert w.shape == (2, 2, 4, 2)
    assert w[0, 0, :, 0].argmax() == 2 and w[0, 0, 2, 0] > 0.9 and w[0, 0, [0, 1, 3], 0].max() < 0.1
    assert w[0, 0, :, 1].argmax() == 1 and w[0, 0, 1, 1] > 0.9
    assert w[1, 0, :, 0].argmax() == 0 and w[1, 0, 3, 0] < 0.1  # the empty slot is no cube
    assert w[1, :, :, 1].eq(0).all()  # no second mention


def test_ablation_summary_pairs_seeds(tmp_path):
    runs = {
        "none": {"a": [{"counterfactual_question": 40.0}, {"counterfactual_question": 50.0}]},
        "object_0-2": {"a": [{"counterfactual_question": 45.0}, {"counterfactual_question": 53.0}]},
    }
    s = summarize(runs)
    assert s["a"]["none"]["mean_std"]["counterfactual_question"] == pytest.approx(
        (45.0, 50**0.5)
    )  # sample std
    gain = s["a"]["object_0-2"]["counterfactual_gain"]
    assert gain["per_seed"] == [5.0, 3.0] and gain["mean"] == 4.0 and gain["std"] == pytest.approx(2**0.5)
    md = ablation_markdown({"oracle": s}, ["none", "object_0-2"], 2)
    assert "2 seeds: mean ± sample std" in md and "| 45.0 ± 7.1 |" in md
    assert "- object_0-2: +4.0 ± 1.4 points (per seed +5.0, +3.0)" in md
    one = summarize({m: {"a": r["a"][:1]} for m, r in runs.items()})
    assert one["a"]["none"]["mean_std"]["counterfactual_question"] == (40.0, None)  # one seed: no spread
    assert one["a"]["object_0-2"]["counterfactual_gain"]["std"] is None
    md = ablation_markdown({"oracle": one}, ["none", "object_0-2"], 1)
    assert "1 seed: no spread" in md and "| 40.0 |" in md and "±" not in md  # no std of 0.0
    assert "- object_0-2: +5.0 points (one seed)" in md
    png = plot_ablation({"oracle": one}, ["none", "object_0-2"], tmp_path / "one_seed.png")
    assert png.stat().st_size > 0  # drawn: error bars of None (one seed) are left out, not an error
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert masking_config(0).strategy == "none" and masking_config(3).max_objects == 3
    with pytest.raises(ValueError, match=">= 0"):
        masking_config(-1)


def test_ablation_states_what_its_accuracies_are_over():
    assert sampling_error(100) == pytest.approx(5.0) and sampling_error(400) == pytest.approx(2.5)
    assert sampling_error(100, 0.9) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="n=0"):
        sampling_error(0)
    counts = {"descriptive": 550, "explanatory": 54, "predictive": 24, "counterfactual": 100}
    line = count_line(counts)
    assert line.startswith("Scored on 728 validation questions (550 descriptive, 54 explanatory, 24 pred")
    assert "Over 100 counterfactual questions" in line and "error of 5.0 points" in line
    no_cf = count_line({"descriptive": 3})
    assert "Scored on 3 validation questions (3 descriptive, 0 explanatory" in no_cf and "error" not in no_cf
    s = summarize({"none": {"a": [{"counterfactual_question": 40.0}]}})
    md = ablation_markdown({"oracle": s}, ["none"], 1, counts)
    assert md.splitlines()[2] == line  # under the title
    assert line not in ablation_markdown({"oracle": s}, ["none"], 1)


# the commands ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qa_world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("qa")
    root = oracle_world(base, ("data.generator.counterfactuals=true",))
    return {"base": base, "root": root, "run": base / "run"}


def test_eval_clevrer_command(qa_world, monkeypatch):
    monkeypatch.chdir(qa_world["base"])
    ckpt = qa_world["run"] / "predictor.pt"
    argv = [
        "eval",
        "clevrer",
        "preset=smoke",
        f"checkpoint={ckpt}",
        f"data.root={qa_world['root']}",
        "reader.dim=16",
        "reader.heads=2",
        "reader.mlp_hidden=16",
        "trainer.progress=false",
    ]
    cli.main(argv)
    out = qa_world["run"] / "qa"
    res = json.loads((out / "results.json").read_text())
    assert set(res["protocols"]) == {"a", "b"}
    for metrics in res["protocols"].values():
        assert {"descriptive", "counterfactual_question", "all_question"} <= set(metrics)
        assert all(0.0 <= x <= 100.0 for x in metrics.values())
    assert res["masking"]["strategy"] == "object" and res["grounding"]["questions"]["questions"] > 0
    assert res["grounding"]["readout_validation_accuracy"]["color"] > 0.5  # oracle slots carry colour
    assert (out / "protocol_b" / "reader.pt").exists() and "protocol (b)" in (out / "results.md").read_text()
    with __import__("h5py").File(out / "rollout_validation.h5") as f:
        assert f["slots"].shape[0] == 2 and f.attrs["kind"] == "rollout"
    stamps = {f: f.stat().st_mtime_ns for f in (out / "protocol_a" / "reader.pt", out / "rollout_train.h5")}
    cli.main(argv)  # done: read back, nothing trained or rolled out again
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps
    assert json.loads((out / "results.json").read_text()) == res


def test_eval_cf_geometry_command(qa_world, monkeypatch, capsys):
    monkeypatch.chdir(qa_world["base"])
    out = qa_world["base"] / "cf_geometry"
    base = ["eval", "cf-geometry", f"data.root={qa_world['root']}", "progress=false"]
    cli.main([*base, f"checkpoints=[{qa_world['run'] / 'predictor.pt'}]", f"out={out}"])
    res = json.loads((out / "results.json").read_text())
    questions = load_questions(qa_world["root"] / "questions" / "validation.json")
    cf = [q for v in questions for q in v["questions"] if q["question_type"] == "counterfactual"]
    assert res["counts"]["questions"] == len(cf) > 0
    worlds = [f"{w}, from {s}{e}" for w in ("constant velocity", "run") for s in ("first", "contact")
              for e in ("", ", entries")]  # fmt: skip
    assert list(res["rows"]) == ["factual", "truth", *worlds]  # the smoke data has cf_slots: a truth row
    choices = sum(len(q["choices"]) for q in cf)
    for row in res["rows"].values():
        assert 0.0 <= row["question"] <= row["option"] <= 100.0
        assert sum(row["kind_counts"].values()) == choices
    assert "position_error" not in res["rows"]["factual"]
    assert set(res["rows"]["run, from contact, entries"]["position_error"]) == {
        "1",
        "2",
        "4",
        "8",
        "16",
        "32",
    }
    assert res["rows"]["factual"]["kinds"]["kept"] in (100.0, None)
    assert res["rows"]["factual"]["kinds"]["new"] in (0.0, None)
    assert 0.3 <= res["calibration"]["distance"] < 1.5 and res["calibration"]["split"] == "train"
    assert (out / "results.png").stat().st_size > 0 and "| truth |" in (out / "results.md").read_text()
    # the references alone, from contact only: the same numbers for the rows they share
    cli.main([*base, "starts=[contact]", "entries=[true]", f"out={out}_refs"])
    refs = json.loads((out.with_name(out.name + "_refs") / "results.json").read_text())
    assert list(refs["rows"]) == ["factual", "truth", "constant velocity, from contact, entries"]
    assert refs["rows"]["truth"] == res["rows"]["truth"]
    assert 0.0 <= res["rows"]["truth"]["changed"] <= 100.0 and "changed" not in res["rows"]["run, from first"]
    # factual_rollouts: the predictor's own world beside each of its rows, and the share it turns
    ckpt = f"checkpoints=[{qa_world['run'] / 'predictor.pt'}]"
    cli.main([*base, ckpt, "starts=[contact]", "entries=[true]", "factual_rollouts=true", f"out={out}_own"])
    own = json.loads((out.with_name(out.name + "_own") / "results.json").read_text())
    assert list(own["rows"])[-2:] == [
        "run, from contact, entries",
        "run, factual rollout, from contact, entries",
    ]
    row = own["rows"]["run, from contact, entries"]
    assert {k: row[k] for k in ("option", "question", "kinds")} == {
        k: res["rows"]["run, from contact, entries"][k] for k in ("option", "question", "kinds")
    }
    assert 0.0 <= row["changed"] <= 100.0
    assert "| changed |" in (out.with_name(out.name + "_own") / "results.md").read_text()
    for override, message in [
        ("slots=learned", "needs positions in the slot"),
        ("starts=[middle]", "'middle' is not one of"),
        (f"stride=3 checkpoints=[{qa_world['run'] / 'predictor.pt'}]", "give stride=2"),
    ]:
        with pytest.raises(SystemExit):
            cli.main([*base, *override.split(), f"out={qa_world['base'] / 'cf_bad'}"])
        assert message in capsys.readouterr().err
    assert not (qa_world["base"] / "cf_bad" / "results.json").exists()


def test_eval_clevrer_errors(qa_world, monkeypatch, capsys):
    monkeypatch.chdir(qa_world["base"])
    base = ["eval", "clevrer", "preset=smoke", f"checkpoint={qa_world['run'] / 'predictor.pt'}",
            f"data.root={qa_world['root']}", "trainer.progress=false"]  # fmt: skip
    cases = [
        ("protocols=[c]", "protocol 'c' is not known"),
        ("reader.frame_stride=5", "must be a multiple of the predictor's stride"),
    ]
    for k, (override, message) in enumerate(cases):
        with pytest.raises(SystemExit):
            cli.main([*base, override, f"out={qa_world['base'] / f'bad{k}'}"])
        assert message in capsys.readouterr().err
        # refused before any reader is trained or rollout written
        assert not (qa_world["base"] / f"bad{k}" / "protocol_a").exists()
        assert not list((qa_world["base"] / f"bad{k}").glob("rollout_*.h5"))


def test_eval_clevrer_without_slot_object_needs_reader_ground_false(qa_world, monkeypatch, capsys):
    """Real CLEVRER slot stores have no slot_object: the readout cannot be trained."""
    import shutil

    import h5py

    monkeypatch.chdir(qa_world["base"])
    slots = qa_world["base"] / "slots_without_owner"
    shutil.copytree(qa_world["root"] / "oracle_slots", slots)
    for split in ("train", "validation"):
        with h5py.File(slots / f"{split}.h5", "a") as f:
            del f["slot_object"]
    base = ["eval", "clevrer", "preset=smoke", f"checkpoint={qa_world['run'] / 'predictor.pt'}",
            f"data.root={qa_world['root']}", f"slots={slots}", "trainer.progress=false", "protocols=[a]",
            "reader.dim=16", "reader.heads=2", "reader.mlp_hidden=16"]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main([*base, f"out={qa_world['base'] / 'owner_bad'}"])
    err = capsys.readouterr().err
    assert "has no slot_object" in err and "set reader.ground=false" in err and "protocol (b)" not in err
    assert not (qa_world["base"] / "owner_bad" / "protocol_a").exists()
    out = qa_world["base"] / "owner_ok"
    cli.main([*base, "reader.ground=false", f"out={out}"])
    res = json.loads((out / "results.json").read_text())
    assert set(res["protocols"]) == {"a"} and "grounding" not in res


def test_eval_ablation_command(qa_world, monkeypatch, capsys):
    monkeypatch.chdir(qa_world["base"])
    out = qa_world["base"] / "ablation"
    common = [
        "eval",
        "ablation",
        "preset=smoke",
        f"data.root={qa_world['root']}",
        f"out={out}",
        "slots=[oracle]",
    ]
    cli.main([*common, "seeds=[0,1]", "max_masked=[0,2]", "trainer.progress=false"])
    md = (out / "ablation.md").read_text()
    assert "oracle slots, protocol (b)" in md and "object_0-2" in md and "paired by seed" in md
    summary = json.loads((out / "ablation.json").read_text())["summary"]["oracle"]
    assert summary["a"]["none"]["seeds"] == 2 and "counterfactual_gain" in summary["b"]["object_0-2"]
    runs = {  # each run's own results, from its results.json
        (m, s): json.loads((out / "oracle" / m / f"seed{s}" / "qa" / "results.json").read_text())[
            "protocols"
        ]["b"]
        for m in ("none", "object_0-2")
        for s in (0, 1)
    }
    gain = summary["b"]["object_0-2"]["counterfactual_gain"]
    want = [
        runs["object_0-2", s]["counterfactual_question"] - runs["none", s]["counterfactual_question"]
        for s in (0, 1)
    ]
    assert gain["per_seed"] == pytest.approx(want)
    assert gain["mean"] == pytest.approx(np.mean(want))
    assert (out / "ablation.png").stat().st_size > 1000
    assert (out / "oracle" / "object_0-2" / "seed1" / "predictor.pt").exists()
    # what the accuracies are over: the validation question file's counts, in the json and the md
    videos = json.loads((qa_world["root"] / "questions" / "validation.json").read_text())
    kinds = [q["question_type"] for v in videos for q in v["questions"]]
    counts = json.loads((out / "ablation.json").read_text())["validation_questions"]
    assert counts == {t: kinds.count(t) for t in QUESTION_TYPES}
    assert f"Scored on {len(kinds)} validation questions" in md
    with pytest.raises(SystemExit):
        cli.main([*common, "max_masked=[1]"])
    assert "needs 0 (no masking)" in capsys.readouterr().err


def test_eval_clevrer_refuses_results_of_other_inputs(qa_world, monkeypatch, capsys):
    """Results made with another reader config are never mixed into a new run's table."""
    monkeypatch.chdir(qa_world["base"])
    ckpt = qa_world["run"] / "predictor.pt"
    out = qa_world["base"] / "stale"
    common = ["eval", "clevrer", "preset=smoke", f"checkpoint={ckpt}", f"data.root={qa_world['root']}",
              f"out={out}", "reader.dim=16", "reader.heads=2", "reader.mlp_hidden=16",
              "trainer.progress=false"]  # fmt: skip
    cli.main([*common, "protocols=[a]"])
    with pytest.raises(SystemExit):
        cli.main([*common, "protocols=[a,b]", "seed=3"])
    assert "made with other inputs (differing: ['seed'])" in capsys.readouterr().err
    (out / "results.md").unlink()
    cli.main([*common, "protocols=[a]"])  # nothing to run: the table is written again
    assert "protocol (a)" in (out / "results.md").read_text()


def test_protocol_b_on_the_true_counterfactual_world(qa_world, monkeypatch):
    """counterfactuals=truth: protocol (b) reads the re-simulated world without the named object."""
    from causaljepa.data.slot_store import SlotStore
    from causaljepa.data.store import VideoStore
    from causaljepa.evaluation.clevrer_qa import described_object, true_counterfactual_part
    from causaljepa.evaluation.qa import Counterfactuals

    monkeypatch.chdir(qa_world["base"])
    root = qa_world["root"]
    with VideoStore(root / "validation.h5") as vs, SlotStore(root / "oracle_slots" / "validation.h5") as st:
        props = vs.f["object_properties"][:]
        first = vs.annotation(0)["object_property"][0]
        attrs = {k: first[k] for k in ("color", "shape", "material")}
        assert described_object(props[0], attrs) == 0
        part = true_counterfactual_part(st, props, Counterfactuals([0], [attrs], [0]), 16)
        np.testing.assert_array_equal(
            part[0].numpy(), st.read("cf_slots", 0, 0, st.observed_frames, 16, removed=0)
        )
        assert not part[0, :, 0].any()  # the removed object's oracle slot is empty throughout
    out = qa_world["base"] / "truth"
    cli.main(["eval", "clevrer", "preset=smoke", f"checkpoint={qa_world['run'] / 'predictor.pt'}",
              f"data.root={root}", "protocols=[b]", "counterfactuals=truth", f"out={out}", "reader.dim=16",
              "reader.heads=2", "reader.mlp_hidden=16", "trainer.progress=false"])  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert (
        res["sources"]["b"]["counterfactuals"] == "truth"
        and "counterfactual_question" in res["protocols"]["b"]
    )


def test_protocol_b_rollout_from_first_frames_or_from_contact(qa_world, monkeypatch):
    """counterfactual_part: from the first frames, the intervened rollout; from contact, the
    observed world until the removed object first comes near another, then the rollout."""
    from causaljepa.data.slot_store import SlotStore
    from causaljepa.evaluation.cf_geometry import first_contact, positions
    from causaljepa.evaluation.clevrer_qa import QAConfig, counterfactual_part
    from causaljepa.evaluation.qa import Counterfactuals
    from causaljepa.rollout import intervene
    from causaljepa.training.predictor import load_predictor

    monkeypatch.chdir(qa_world["base"])
    model, _ = load_predictor(qa_world["run"] / "predictor.pt", "cpu")
    H, s, fs = model.cfg.history, 2, 16

    class Fixed:  # a readout that grounds every question to slot 1
        pass

    def to_slot_1(readout, hist, attrs):
        return torch.ones(len(attrs), dtype=torch.int64)

    monkeypatch.setattr("causaljepa.evaluation.clevrer_qa.ground", to_slot_1)
    with SlotStore(qa_world["root"] / "oracle_slots" / "validation.h5") as st:
        cfs = Counterfactuals([0, 1], [{"color": "red"}] * 2, [0, 1])
        kw = {"stride": s, "frame_stride": fs, "commit": None, "batch_size": 8, "progress": False}
        part, chosen = counterfactual_part(model, st, Fixed(), cfs, **kw)
        assert chosen.tolist() == [1, 1]
        hist = torch.stack([torch.from_numpy(st.read("slots", i, 0, (H - 1) * s + 1, s)) for i in (0, 1)])
        R = (st.observed_frames - 1) // fs * fs // s + 1
        pred = intervene(model, hist, 1, R - H)
        full = torch.cat([hist, pred], dim=1)
        full[:, :, 1] = 0.0
        torch.testing.assert_close(part, full[:, :: fs // s])
        # from contact, with no contact possible (distance 0): the observed world without slot 1
        alone, _ = counterfactual_part(model, st, Fixed(), cfs, start="contact", contact=0.0, **kw)
        want = torch.from_numpy(st.f["slots"][:2, : st.observed_frames : fs]).clone()
        want[:, :, 1] = 0.0
        torch.testing.assert_close(alone, want)
        # a real contact distance: the rows before the contact are observed, later ones rolled out
        near, _ = counterfactual_part(model, st, Fixed(), cfs, start="contact", contact=1.0, **kw)
        for v in (0, 1):
            t = first_contact(*positions(st.read("slots", v, 0, st.observed_frames)), 1, 1.0)
            e = st.observed_frames if t is None else max(H - 1, (t - 1) // s) * s
            rows = [r for r in range(0, st.observed_frames, fs) if r <= e]
            torch.testing.assert_close(near[v, : len(rows)], want[v, : len(rows)])
        with pytest.raises(ValueError, match="needs the contact distance"):
            counterfactual_part(model, st, Fixed(), cfs, start="contact", **kw)
    # entries read when an object enters from the oracle's present field: learned slots are refused
    learned = SimpleNamespace(
        path="slots/validation.h5", observed_frames=128, encoder_hash="3f2a" * 8, slot_dim=64
    )
    for bad in ({"entries": True}, {"start": "contact", "contact": 1.0}):
        with pytest.raises(ValueError, match="needs oracle slots"):
            counterfactual_part(model, learned, Fixed(), cfs, **kw, **bad)
    with pytest.raises(ValueError, match="counterfactual_start must be 'first' or 'contact'"):
        QAConfig(None, None, None, counterfactual_start="middle")
    out = qa_world["base"] / "contact"
    cli.main(["eval", "clevrer", "preset=smoke", f"checkpoint={qa_world['run'] / 'predictor.pt'}",
              f"data.root={qa_world['root']}", "protocols=[b]", "counterfactual_start=contact",
              "counterfactual_entries=true", f"out={out}", "reader.dim=16", "reader.heads=2",
              "reader.mlp_hidden=16", "trainer.progress=false"])  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert (
        res["sources"]["b"]["counterfactual_start"] == "contact"
        and res["sources"]["b"]["counterfactual_entries"]
    )
    assert 0.3 <= res["contact_calibration"]["distance"] < 1.5
    assert "counterfactual_question" in res["protocols"]["b"]


def test_readout_data_labels_each_slot_with_its_objects_attributes(qa_world):
    from causaljepa.data.slot_store import SlotStore
    from causaljepa.evaluation.clevrer_qa import object_properties, readout_data

    root = qa_world["root"]
    props = object_properties(root / "validation.h5")
    with SlotStore(root / "oracle_slots" / "validation.h5") as st:
        x, y = readout_data(st, props, [0, 4])
        obj = st.f["slot_object"][:, [0, 4]]
    assert len(x) == obj.size and x.shape[1] == st.slot_dim  # every slot, in (video, frame, slot) order
    covers = torch.from_numpy(obj.reshape(-1) >= 0)
    assert torch.equal(y[:, 0] >= 0, covers) and y[~covers].eq(-1).all()
    assert x[~covers].eq(0).all()  # an oracle slot of no object is all zeros
    # oracle slots carry the attributes one-hot after the 8 kinematic fields
    xo = x[covers]
    colour, shape, material = xo[:, 8:16].argmax(1), xo[:, 16:19].argmax(1), xo[:, 19:21].argmax(1)
    assert torch.equal(torch.stack([colour, shape, material], 1), y[covers])


def test_trained_readout_is_fitted_once_per_store_frames_and_seed(qa_world, monkeypatch):
    """The main job's two QA stages and the ablation's runs share one fit; a kept fit is the
    one a fresh fit gives (the fit is deterministic under its seed)."""
    from causaljepa.data.slot_store import SlotStore
    from causaljepa.evaluation import clevrer_qa as cq

    root = qa_world["root"]
    props = cq.object_properties(root / "train.h5")
    monkeypatch.setattr(cq, "_READOUTS", {})
    fits = []
    real_fit = cq.fit_readout
    monkeypatch.setattr(cq, "fit_readout", lambda *a, **k: fits.append(1) or real_fit(*a, steps=20, **k))
    with SlotStore(root / "oracle_slots" / "train.h5") as st:
        a = cq.trained_readout(st, props, [0, 4], seed=0)
        assert cq.trained_readout(st, props, [0, 4], seed=0) is a and len(fits) == 1
        b = cq.trained_readout(st, props, [0, 4], seed=1)  # another seed, frames or labels: another fit
        c = cq.trained_readout(st, props, [0, 8], seed=0)
        other = props.copy()
        other[0, 0, 0] = (other[0, 0, 0] + 1) % 8
        d = cq.trained_readout(st, other, [0, 4], seed=0)
        assert len(fits) == 4 and len({id(m) for m in (a, b, c, d)}) == 4
        fresh = real_fit(*cq.readout_data(st, props, [0, 4]), seed=0, steps=20)
    for p, q in zip(a.state_dict().values(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_qa_dir_name_keeps_protocol_b_variants_apart():
    from causaljepa.evaluation.clevrer_qa import QAConfig

    names = [
        qa_dir_name(QAConfig(None, None, None, counterfactual_start=start, counterfactual_entries=entries))
        for start in ("first", "contact")
        for entries in (False, True)
    ]
    assert names == ["qa", "qa_entries", "qa_contact", "qa_contact_entries"]
