"""A small PNG decoder (stdlib only: zlib) for the images diffrl sends — 8-bit gray,
RGB or RGBA, not interlaced, as core/io/png.c writes them — and an encoder for tests.
Anything else is decoded with Pillow when it is installed."""
import io
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Image:
    """Row-major 8-bit pixels: pixels[(y * width + x) * channels + c]."""

    def __init__(self, width, height, channels, pixels):
        self.width, self.height, self.channels, self.pixels = width, height, channels, pixels

    def pixel(self, x, y):
        at = (y * self.width + x) * self.channels
        return tuple(self.pixels[at:at + self.channels])

    def to_pil(self):
        from PIL import Image as PILImage
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[self.channels]
        return PILImage.frombytes(mode, (self.width, self.height), bytes(self.pixels))

    def to_numpy(self):
        import numpy as np
        return np.frombuffer(bytes(self.pixels), np.uint8).reshape(
            self.height, self.width, self.channels)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def decode(data):
    if data[:8] != SIGNATURE:
        raise ValueError("not a PNG file")
    at, chunks, header = 8, [], None
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
        at += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        from PIL import Image as PILImage  # the general case
        im = PILImage.open(io.BytesIO(data)).convert("RGB")
        return Image(im.width, im.height, 3, bytearray(im.tobytes()))
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                line[x] = (line[x] + _paeth(a, b, c)) & 255
            elif f != 0:
                raise ValueError(f"bad PNG filter {f}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return Image(width, height, channels, out)


def encode(image):
    """An 8-bit PNG of a png.Image (filter 0), for tests."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    color = {1: 0, 3: 2, 4: 6}[image.channels]
    stride = image.width * image.channels
    raw = b"".join(b"\x00" + bytes(image.pixels[y * stride:(y + 1) * stride])
                   for y in range(image.height))
    return (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", image.width, image.height, 8,
                                                   color, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
