#!/usr/bin/env python3
"""The reference reward server for diffrl's reward_server client (protocol:
docs/reward-server.md), Python standard library only.

    python3 tools/reward_server/server.py --reward composition \
        --model demo_models:color_detector --port 8000
    python3 tools/reward_server/server.py --reward parity --classes 4 \
        --model mypackage.skin:classify --port 8001

GET /health -> {"status": "ok", "reward": ..., "model": ...}
POST /score {"images": [base64 PNG], "prompts": [...], "metadata": {...}}
    -> {"scores": [number or null, ...], "info": {name: number}}
--model module:function names the user's model: for composition a detector
detect(image, labels) -> {label: confidence}, for parity a classifier classify(image)
-> class (rewards.py). The module is imported from this folder, the current folder or
sys.path. Requests are scored one at a time (models need not be thread-safe).
"""
import argparse
import base64
import binascii
import importlib
import json
import os
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import png  # noqa: E402
import rewards  # noqa: E402

MAX_BODY = 512 * 1024 * 1024


def load_function(spec):
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--model must be module:function, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module), name)


def make_scorer(args):
    model = load_function(args.model)
    if args.reward == "composition":
        return lambda images, prompts, meta: rewards.composition_reward(images, prompts, meta, model)
    classes = int(args.classes) if args.classes.isdigit() else args.classes.split(",")
    return lambda images, prompts, meta: rewards.parity_reward(images, prompts, meta, model, classes)


class BadRequest(Exception):
    pass


def parse_request(body):
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise BadRequest(f"the body is not JSON: {e}")
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    images, prompts = doc.get("images"), doc.get("prompts")
    meta = doc.get("metadata") or {}
    if not isinstance(images, list) or not isinstance(prompts, list) or len(images) != len(prompts):
        raise BadRequest('"images" and "prompts" must be lists of the same length')
    if not isinstance(meta, dict):
        raise BadRequest('"metadata" must be an object')
    decoded = []
    for i, b64 in enumerate(images):
        try:
            decoded.append(png.decode(base64.b64decode(b64, validate=True)))
        except (binascii.Error, ValueError, TypeError) as e:
            raise BadRequest(f"image {i + 1}: {e}")
    return decoded, [str(p) for p in prompts], meta


class Handler(BaseHTTPRequestHandler):
    server_version = "diffrl-reward-server/1"

    def reply(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.rstrip("/") == "/health":
            return self.reply(200, {"status": "ok", "reward": self.server.args.reward,
                                    "model": self.server.args.model})
        self.reply(404, {"error": f"no such path {self.path}"})

    def do_POST(self):
        if self.path.rstrip("/") != "/score":
            return self.reply(404, {"error": f"no such path {self.path}"})
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            return self.reply(400, {"error": f"Content-Length {length} out of range"})
        try:
            images, prompts, meta = parse_request(self.rfile.read(length))
            with self.server.lock:
                scores, info = self.server.scorer(images, prompts, meta)
        except BadRequest as e:
            return self.reply(400, {"error": str(e)})
        except Exception as e:  # the model failed: the client retries, then skips
            traceback.print_exc()
            return self.reply(500, {"error": f"{type(e).__name__}: {e}"})
        self.reply(200, {"scores": scores, "info": info})

    def log_message(self, fmt, *args):
        if not self.server.args.quiet:
            sys.stderr.write("reward_server: " + fmt % args + "\n")


def serve(args, ready=None):
    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.args, httpd.scorer, httpd.lock = args, make_scorer(args), threading.Lock()
    if ready:
        ready(httpd)
    httpd.serve_forever()


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reward", choices=("composition", "parity"), required=True)
    p.add_argument("--model", required=True, help="module:function (a detector or classifier)")
    p.add_argument("--classes", default="4", help="parity: K, or class names a,b,c")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--quiet", action="store_true")
    return p


if __name__ == "__main__":
    a = parser().parse_args()
    print(f"reward_server: {a.reward} with {a.model} on http://{a.host}:{a.port}", flush=True)
    serve(a)
