"""Stand-in models for trying the reference server without a download: a colour
"detector" and a brightness "classifier". Replace them with real ones (UniDet,
OWL-ViT, Grounding DINO; a skin-tone classifier) through --model module:function."""

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220),
           "yellow": (230, 220, 30), "white": (245, 245, 245), "black": (10, 10, 10),
           "orange": (240, 140, 20), "purple": (140, 30, 160)}


def color_detector(image, labels):
    """detect(image, labels) -> {label: confidence}: a label's colour word (the first
    one it holds, e.g. 'red' of 'red ball') scores the fraction of pixels near that
    colour, times 4, capped at 1; labels without a colour word score 0."""
    px, n = image.pixels, image.width * image.height
    ch = image.channels
    out = {}
    for label in labels:
        colour = next((COLOURS[w] for w in label.split() if w in COLOURS), None)
        if colour is None or ch < 3:
            out[label] = 0.0
            continue
        near = sum(1 for i in range(0, n * ch, ch)
                   if abs(px[i] - colour[0]) + abs(px[i + 1] - colour[1]) +
                   abs(px[i + 2] - colour[2]) < 120)
        out[label] = min(1.0, 4.0 * near / n)
    return out


def brightness_classifier(image):
    """classify(image) -> 0..3: the quartile of the mean brightness."""
    px = image.pixels
    mean = sum(px) / max(len(px), 1)
    return min(3, int(mean // 64))
