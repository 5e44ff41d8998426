"""Questions in the CLEVRER question schema, answered by simulation.

Four types, as in CLEVRER:

- descriptive: count / exist / query_color / query_shape / query_material, about the
  observed frames;
- explanatory: "Which of the following is responsible for the collision between A and B?"
  A choice (an object's presence, an object's entering, an earlier collision) is correct
  exactly when the collision does not happen in the world re-simulated without it
  (object removed from the first frame, or the two objects of the earlier collision made
  to pass through each other);
- predictive: "What will happen next?": collisions and exits in the simulated future
  frames that the video does not show;
- counterfactual: "Which event will happen if X is removed?": collisions in the world
  re-simulated without X from the first frame.

"The collision between A and B still happens" means: the intervened world has at least as
many A-B collisions in the observed frames as the factual world up to and including this
one (timing may shift; the event is the same pair touching). Explanatory questions are
only asked about pairs that collide once, so the question names one event; the same holds
for an earlier collision offered as a choice.

Only what the camera shows is an event: a collision counts when both objects are in view,
and questions name only objects that are in view at some observed frame.

Every question and every choice carries a postfix program (CLEVRER's module vocabulary).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .clevrer_sim import Scene, Trajectory, simulate

MOVING_SPEED = 0.15  # world units / s: faster than this is "moving"
COUNT_ANSWERS = tuple(str(i) for i in range(6))


@dataclass(frozen=True)
class QuestionConfig:
    descriptive: int = 11  # per video, at most (CLEVRER train: 11.0 per video)
    explanatory: int = 3  # CLEVRER: 1.7 (fewer are asked where fewer collisions qualify)
    counterfactual: int = 2  # CLEVRER: 1.9
    predictive: int = 1  # 0 or 1; CLEVRER: 0.7
    max_choices: int = 4

    def __post_init__(self) -> None:
        for name in ("descriptive", "explanatory", "counterfactual", "predictive"):
            if getattr(self, name) < 0:
                raise ValueError(f"QuestionConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.predictive > 1:
            raise ValueError(
                f"QuestionConfig.predictive must be 0 or 1 (one 'What will happen next?' per video), "
                f"got {self.predictive}"
            )
        if not 2 <= self.max_choices <= 6:
            raise ValueError(f"QuestionConfig.max_choices must be in 2..6, got {self.max_choices}")


class _Ref:
    """The shortest unique description of an object among the video's objects."""

    ORDERS = (
        ("color",),
        ("shape",),
        ("material",),
        ("color", "shape"),
        ("material", "shape"),
        ("color", "material"),
        ("color", "material", "shape"),
    )

    def __init__(self, scene: Scene):
        self.objs = scene.objects
        self.cache: dict[int, tuple[str, list[str], tuple[str, ...]]] = {}

    def __call__(self, oid: int) -> tuple[str, list[str]]:
        text, prog, _ = self.full(oid)
        return text, prog

    def full(self, oid: int):
        if oid not in self.cache:
            o = self.objs[oid]
            for keys in self.ORDERS:
                match = [p for p in self.objs if all(getattr(p, k) == getattr(o, k) for k in keys)]
                if len(match) == 1:
                    break
            self.cache[oid] = (
                phrase({k: getattr(o, k) for k in keys}),
                [*filter_program({k: getattr(o, k) for k in keys}), "unique"],
                keys,
            )
        return self.cache[oid]


_PLURAL = {"cube": "cubes", "sphere": "spheres", "cylinder": "cylinders", None: "objects"}


def noun(attrs: dict[str, str], plural: bool = False) -> str:
    """'red metal sphere', 'cube', 'gray object' (plural: 'gray objects')."""
    words = [attrs[k] for k in ("color", "material") if k in attrs]
    shape = attrs.get("shape")
    words.append(_PLURAL[shape] if plural else shape or "object")
    return " ".join(words)


def phrase(attrs: dict[str, str]) -> str:
    """'the red metal sphere', 'the cube', 'the gray object'."""
    return "the " + noun(attrs)


def filter_program(attrs: dict[str, str]) -> list[str]:
    prog = ["objects"]
    for k in ("color", "material", "shape"):
        if k in attrs:
            prog += [attrs[k], f"filter_{k}"]
    return prog


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _first_each(items) -> list[int]:
    """Distinct items in order of first appearance."""
    return list(dict.fromkeys(items))


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


class QuestionGenerator:
    """Writes one video's questions; caches the intervened simulations it needs."""

    def __init__(
        self, scene: Scene, traj: Trajectory, observed: int, rng: np.random.Generator, cfg: QuestionConfig
    ):
        self.scene, self.traj, self.T, self.rng, self.cfg = scene, traj, observed, rng, cfg
        self.ref = _Ref(scene)
        # questions only name objects the video shows (an object may enter after the last frame)
        self.ids = [o.object_id for o in scene.objects if traj.in_view[:observed, o.object_id].any()]
        self._without: dict[int, Trajectory] = {}
        self._prevented: dict[tuple[int, int], Trajectory] = {}
        self.obs_collisions = traj.collisions_before(observed)
        # facts about the observed video, computed once
        end = observed - 1
        fast = np.linalg.norm(traj.states[end, :, 2:4], axis=-1) > MOVING_SPEED
        shown_at_end = [o for o in self.ids if traj.in_view[end, o]]
        self.moving = {o for o in shown_at_end if fast[o]}
        self.still = {o for o in shown_at_end if not fast[o]}
        # objects coming into view after the first frame / leaving it, in order of first event
        self.entering = _first_each(o for _, o in traj.entries(0, observed) if scene.objects[o].entering)
        self.exiting = _first_each(o for _, o in traj.exits(0, observed))

    # intervened worlds -------------------------------------------------------------
    def without(self, oid: int) -> Trajectory:
        if oid not in self._without:
            self._without[oid] = simulate(self.scene, removed=oid)
        return self._without[oid]

    def prevented(self, a: int, b: int) -> Trajectory:
        key = (min(a, b), max(a, b))
        if key not in self._prevented:
            self._prevented[key] = simulate(self.scene, prevented=key)
        return self._prevented[key]

    def partners(self, oid: int) -> list[int]:
        return _first_each(c.b if c.a == oid else c.a for c in self.obs_collisions if oid in (c.a, c.b))

    # descriptive ---------------------------------------------------------------------
    def _random_filter(self) -> dict[str, str]:
        kinds = ["color", "shape", "material"]
        pick = self.rng.integers(len(kinds) + 1)
        if pick == len(kinds):
            return {}
        k = kinds[pick]
        o = self.scene.objects[self.ids[self.rng.integers(len(self.ids))]]
        return {k: getattr(o, k)}

    def _match(self, attrs: dict[str, str], pool) -> list[int]:
        return [o for o in pool if all(getattr(self.scene.objects[o], k) == v for k, v in attrs.items())]

    def descriptive(self) -> list[dict]:
        out: dict[str, dict] = {}
        makers = [
            self._d_count_state,
            self._d_count_collisions,
            self._d_count_events,
            self._d_exist_events,
            self._d_exist_partner,
            self._d_query_partner,
            self._d_query_event_object,
        ]
        for _ in range(20 * max(self.cfg.descriptive, 1)):
            if len(out) >= self.cfg.descriptive:
                break
            make = makers[self.rng.integers(len(makers))]
            q = make()
            if q is not None and q["question"] not in out:
                out[q["question"]] = q
        return list(out.values())

    def _d_count_state(self):
        f = self._random_filter()
        is_moving = bool(self.rng.random() < 0.5)
        pool = self.moving if is_moving else self.still
        n = len(self._match(f, pool))
        word = "moving" if is_moving else "stationary"
        return _desc(
            f"How many {noun(f, plural=True)} are {word} when the video ends?",
            "count",
            ["end", *filter_program(f), f"filter_{word}", "count"],
            str(n),
        )

    def _d_count_collisions(self):
        n = len(self.obs_collisions)
        return _desc("How many collisions happen?", "count", ["events", "filter_collision", "count"], str(n))

    def _d_count_events(self):
        f = self._random_filter()
        enter = bool(self.rng.random() < 0.5)
        n = len(self._match(f, self.entering if enter else self.exiting))
        verb, mod = ("enter", "filter_in") if enter else ("exit", "filter_out")
        return _desc(
            f"How many {noun(f, plural=True)} {verb} the scene?",
            "count",
            ["events", *filter_program(f), mod, "count"],
            str(n),
        )

    def _d_exist_events(self):
        entering, exiting, still = self.entering, self.exiting, self.still
        f = self._random_filter()
        kind = int(self.rng.integers(3))
        pool, text, mod = [
            (entering, "that enters the scene", ["events", "filter_in"]),
            (exiting, "that exits the scene", ["events", "filter_out"]),
            (still, "that is stationary when the video ends", ["end", "filter_stationary"]),
        ][kind]
        ans = "yes" if self._match(f, pool) else "no"
        return _desc(f"Is there {_a(noun(f))} {text}?", "exist", [*filter_program(f), *mod, "exist"], ans)

    def _d_exist_partner(self):
        target = self.ids[self.rng.integers(len(self.ids))]
        f = self._random_filter()
        rtext, rprog = self.ref(target)
        cands = [o for o in self._match(f, self.ids) if o != target]
        if not cands:
            return None
        ans = "yes" if set(cands) & set(self.partners(target)) else "no"
        return _desc(
            f"Is there {_a(noun(f))} that collides with {rtext}?",
            "exist",
            [*filter_program(f), "events", *rprog, "filter_collision", "get_col_partner", "exist"],
            ans,
        )

    def _d_query_partner(self):
        target = self.ids[self.rng.integers(len(self.ids))]
        partners = self.partners(target)
        if not partners:
            return None
        attr = ("color", "shape", "material")[self.rng.integers(3)]
        rtext, rprog = self.ref(target)
        if len(partners) == 1:
            obj, text, prog = (
                partners[0],
                f"the object that collides with {rtext}",
                ["events", *rprog, "filter_collision", "unique"],
            )
        else:
            obj = partners[0]
            text = f"the first object that collides with {rtext}"
            prog = ["events", *rprog, "filter_collision", "filter_order_first", "unique"]
        return self._query(attr, obj, text, [*prog, "get_col_partner"])

    def _d_query_event_object(self):
        entering, exiting, still, moving = self.entering, self.exiting, self.still, self.moving
        attr = ("color", "shape", "material")[self.rng.integers(3)]
        options = []
        if len(entering) == 1:
            options.append(
                (entering[0], "the object that enters the scene", ["events", "filter_in", "unique"])
            )
        elif len(entering) > 1:
            options.append(
                (
                    entering[0],
                    "the first object that enters the scene",
                    ["events", "filter_in", "filter_order_first", "unique"],
                )
            )
        if len(exiting) == 1:
            options.append(
                (exiting[0], "the object that exits the scene", ["events", "filter_out", "unique"])
            )
        if len(still) == 1:
            options.append(
                (
                    next(iter(still)),
                    "the object that is stationary when the video ends",
                    ["end", "objects", "filter_stationary", "unique"],
                )
            )
        if len(moving) == 1:
            options.append(
                (
                    next(iter(moving)),
                    "the object that is moving when the video ends",
                    ["end", "objects", "filter_moving", "unique"],
                )
            )
        if not options:
            return None
        obj, text, prog = options[self.rng.integers(len(options))]
        return self._query(attr, obj, text, prog)

    def _query(self, attr: str, obj: int, text: str, prog: list[str]):
        value = getattr(self.scene.objects[obj], attr)
        q = {
            "color": f"What color is {text}?",
            "shape": f"What shape is {text}?",
            "material": f"What is the material of {text}?",
        }[attr]
        return _desc(q, f"query_{attr}", [*prog, f"query_{attr}"], value)

    # multiple choice ---------------------------------------------------------------------
    def _pick_choices(self, correct: list, wrong: list, min_correct: int = 0) -> list[tuple[object, bool]]:
        """2..max_choices choices mixing correct and wrong candidates.

        At least ``min_correct`` of them are correct (when there are that many); the rest are
        drawn from all candidates, so a question has zero to several correct choices.
        """
        pool = [(c, True) for c in correct] + [(w, False) for w in wrong]
        if len(pool) < 2 or len(correct) < min_correct:
            return []
        k = int(self.rng.integers(2, min(self.cfg.max_choices, len(pool)) + 1))
        forced = [int(i) for i in self.rng.permutation(len(correct))[:min_correct]]
        rest = [int(i) for i in self.rng.permutation(len(pool)) if i not in forced][: k - len(forced)]
        chosen = forced + rest
        # shuffled: the position of a choice must not tell whether it is correct
        return [pool[chosen[j]] for j in self.rng.permutation(len(chosen))]

    def _collide_text(self, a: int, b: int) -> tuple[str, list[str]]:
        ta, pa = self.ref(a)
        tb, pb = self.ref(b)
        return f"{_cap(ta)} collides with {tb}", [*pa, *pb, "filter_collision"]

    def explanatory(self) -> list[dict]:
        counts: dict[tuple[int, int], int] = {}
        for c in self.obs_collisions:
            counts[(c.a, c.b)] = counts.get((c.a, c.b), 0) + 1
        targets = [c for c in self.obs_collisions if counts[(c.a, c.b)] == 1]
        order = self.rng.permutation(len(targets))
        out = []
        for i in order:
            if len(out) >= self.cfg.explanatory:
                break
            c = targets[i]
            cands: list[tuple[str, list[str], Trajectory]] = []
            for o in self.ids:
                spec = self.scene.objects[o]
                t, p = self.ref(o)
                if spec.entering and o in self.entering:
                    cands.append(
                        (
                            f"{_cap(t)}'s entering the scene",
                            [*p, "events", "filter_in", "belong_to"],
                            self.without(o),
                        )
                    )
                elif o not in (c.a, c.b):
                    cands.append((f"The presence of {t}", p, self.without(o)))
            # an earlier collision is a choice only if its pair collides once, so that the text
            # names one event and making that pair pass through each other removes just it
            for d in self.obs_collisions:
                if d.frame < c.frame and (d.a, d.b) != (c.a, c.b) and counts[(d.a, d.b)] == 1:
                    ta, pa = self.ref(d.a)
                    tb, pb = self.ref(d.b)
                    cands.append(
                        (
                            f"The collision between {ta} and {tb}",
                            ["events", *pa, *pb, "filter_collision", "unique"],
                            self.prevented(d.a, d.b),
                        )
                    )
            correct = [(t, p) for t, p, w in cands if w.pair_count(c.a, c.b, self.T) < 1]
            wrong = [(t, p) for t, p, w in cands if w.pair_count(c.a, c.b, self.T) >= 1]
            # as in CLEVRER, the choices of an explanatory question include a cause
            choices = self._pick_choices(correct, wrong, min_correct=1)
            if not choices:
                continue
            ta, pa = self.ref(c.a)
            tb, pb = self.ref(c.b)
            out.append(
                _mc(
                    "explanatory",
                    f"Which of the following is responsible for the collision between {ta} and {tb}?",
                    ["events", *pa, *pb, "filter_collision", "unique", "filter_ancestor"],
                    choices,
                )
            )
        return out

    def counterfactual(self) -> list[dict]:
        # removing an object that takes part in collisions is the interesting intervention
        involved = [o for o in self.ids if self.partners(o)]
        rest = [o for o in self.ids if o not in involved]
        order = [*self.rng.permutation(involved).tolist(), *self.rng.permutation(rest).tolist()]
        factual = {(c.a, c.b) for c in self.obs_collisions}
        out = []
        for o in order:
            if len(out) >= self.cfg.counterfactual:
                break
            cf = self.without(o)
            happen = {(c.a, c.b) for c in cf.collisions_before(self.T)}
            others = [i for i in self.ids if i != o]
            pairs = list(itertools.combinations(others, 2))
            shown = set(self.ids)  # a choice names only objects the video shows
            correct = sorted(p for p in happen if set(p) <= shown)
            lost = sorted(p for p in factual - happen if o not in p and set(p) <= shown)
            never = [p for p in pairs if p not in happen and p not in factual]
            never = [never[i] for i in self.rng.permutation(len(never))[:2]]
            choices = self._pick_choices(
                [self._collide_text(*p) for p in correct], [self._collide_text(*p) for p in lost + never]
            )
            if not choices:
                continue
            t, p = self.ref(o)
            out.append(
                _mc(
                    "counterfactual",
                    f"Which event will happen if {t} is removed?",
                    [*p, "get_counterfact"],
                    choices,
                )
            )
        return out

    def predictive(self) -> list[dict]:
        if self.cfg.predictive == 0:
            return []
        T_all = self.traj.states.shape[0]
        shown = set(self.ids)  # an object that enters after the video cannot be named
        future = {
            (c.a, c.b) for c in self.traj.collisions if self.T <= c.frame < T_all and {c.a, c.b} <= shown
        }
        # wrong candidates: pairs that do not collide, nearest first (plausible distractors)
        pos = self.traj.states[self.T - 1, :, :2]
        visible = [o for o in self.ids if self.traj.in_view[self.T - 1, o]]
        pairs = [p for p in itertools.combinations(visible, 2) if p not in future]
        pairs.sort(key=lambda p: float(np.linalg.norm(pos[p[0]] - pos[p[1]])))
        wrong = [self._collide_text(*p) for p in pairs[:2]]
        correct = [self._collide_text(*p) for p in sorted(future)]
        # objects in view at the end that leave the view in the future frames
        leaving = {o for _, o in self.traj.exits(self.T, T_all)}
        for o in visible:
            t, p = self.ref(o)
            (correct if o in leaving else wrong).append(
                (f"{_cap(t)} exits the scene", [*p, "events", "filter_out"])
            )
        if len(wrong) > 3:
            wrong = [wrong[i] for i in sorted(self.rng.permutation(len(wrong))[:3])]
        # asked only when something does happen next, and one of the choices says what
        choices = self._pick_choices(correct, wrong, min_correct=1)
        if not choices:
            return []
        return [_mc("predictive", "What will happen next?", ["events", "get_future"], choices)]

    def all(self) -> list[dict]:
        qs = self.descriptive() + self.explanatory() + self.predictive() + self.counterfactual()
        for i, q in enumerate(qs):
            q["question_id"] = i
        return qs


def _desc(question: str, subtype: str, program: list[str], answer: str):
    if subtype == "count" and answer not in COUNT_ANSWERS:
        return None  # outside CLEVRER's answer vocabulary (0-5): not asked
    return {
        "question_id": -1,
        "question": question,
        "question_type": "descriptive",
        "question_subtype": subtype,
        "program": program,
        "answer": answer,
    }


def _mc(qtype: str, question: str, program: list[str], choices: list[tuple[object, bool]]):
    return {
        "question_id": -1,
        "question": question,
        "question_type": qtype,
        "program": program,
        "choices": [
            {"choice_id": i, "choice": text, "program": prog, "answer": "correct" if ok else "wrong"}
            for i, ((text, prog), ok) in enumerate(choices)
        ],
    }
