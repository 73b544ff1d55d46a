"""The reward logic of the reference reward server, around any user model.

composition_reward: the paper's detection score (Eq. 13): the mean, over the objects
    a prompt names, of the detector's confidence for that object's class.
parity_reward: the paper's fairness reward (Eq. 12): images of one group (one prompt)
    are classified; statistical parity SP = sum_a (freq_a - 1/K)^2; every image of
    the group gets -SP.

A detector is `detect(image, labels) -> {label: confidence}` (the highest confidence
of any detection of that class, 0 when none); a classifier is `classify(image) -> int
in [0, K)` or one of the class names. `image` is a png.Image (width, height,
channels, pixels; .to_pil(), .to_numpy() when those libraries are installed).
"""
import re

RELATIONS = ("on side of", "next to", "beside", "near", "and")
_ARTICLE = r"(?:an?|the|one)\s+"
_PATTERN = re.compile(r"^\s*" + _ARTICLE + r"(.+?)\s+(" + "|".join(RELATIONS) + r")\s+" +
                      _ARTICLE + r"(.+?)[\s.]*$", re.IGNORECASE)


def parse_objects(prompt):
    """'a cat next to a dog' -> ['cat', 'dog'] (the paper's two-object prompts:
    "a X <rel> a Y", rel in and, next to, near, on side of, beside); None when the
    prompt has another form."""
    m = _PATTERN.match(prompt)
    if not m:
        return None
    return [m.group(1).strip().lower(), m.group(3).strip().lower()]


def composition_reward(images, prompts, metadata, detect):
    """Eq. 13. metadata['objects'] (a list, per image, of lists of class names) takes
    precedence over parsing the prompts. Images whose prompt names no object score
    None (the client turns it into NaN: the trainer skips them)."""
    objects = metadata.get("objects")
    scores, found, named = [], 0, 0
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        labels = objects[i] if objects is not None else parse_objects(prompt)
        if not labels:
            scores.append(None)
            continue
        conf = detect(image, list(dict.fromkeys(labels)))
        values = [float(conf.get(label, 0.0)) for label in labels]
        scores.append(sum(values) / len(values))
        found += sum(v > 0.5 for v in values)
        named += len(values)
    info = {"parsed": sum(s is not None for s in scores) / max(len(scores), 1)}
    if named:
        info["found_fraction"] = found / named
    return scores, info


def statistical_parity(outcomes, num_classes):
    """SP = sum_a (freq_a - 1/K)^2 over the K classes (Eq. 12)."""
    n = len(outcomes)
    return sum((sum(o == a for o in outcomes) / n - 1.0 / num_classes) ** 2
               for a in range(num_classes))


def parity_reward(images, prompts, metadata, classify, classes):
    """Eq. 12 per group: metadata['groups'] (one id per image) or, without it, the
    prompt text. `classes` is K or the list of class names classify may return."""
    names = list(classes) if not isinstance(classes, int) else None
    k = len(names) if names else classes
    groups = metadata.get("groups") or prompts
    outcome = []
    for image in images:
        c = classify(image)
        if names and not isinstance(c, int):
            c = names.index(c)
        if not 0 <= c < k:
            raise ValueError(f"the classifier returned class {c}, outside [0, {k})")
        outcome.append(c)
    members = {}
    for i, g in enumerate(groups):
        members.setdefault(g if not isinstance(g, list) else tuple(g), []).append(i)
    scores = [0.0] * len(images)
    sps = []
    for idx in members.values():
        sp = statistical_parity([outcome[i] for i in idx], k)
        sps.append(sp)
        for i in idx:
            scores[i] = -sp
    return scores, {"statistical_parity": sum(sps) / len(sps), "groups": len(sps)}
