#!/usr/bin/env python3
"""Checks the reference server end to end on 127.0.0.1 (stdlib only):
    python3 tools/reward_server/test_server.py"""
import base64
import json
import os
import sys
import threading
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import png  # noqa: E402
import rewards  # noqa: E402
import server  # noqa: E402


def solid(rgb, w=8, h=8):
    return base64.b64encode(png.encode(png.Image(w, h, 3, bytearray(rgb * (w * h))))).decode()


def start(argv):
    args = server.parser().parse_args(argv + ["--port", "0", "--quiet"])
    box = {}
    ready = threading.Event()

    def on_ready(httpd):
        box["httpd"] = httpd
        ready.set()
    threading.Thread(target=server.serve, args=(args, on_ready), daemon=True).start()
    ready.wait(10)
    return box["httpd"], f"http://127.0.0.1:{box['httpd'].server_address[1]}"


def post(url, doc):
    req = urllib.request.Request(url + "/score", json.dumps(doc).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class ServerTest(unittest.TestCase):
    def test_parse_objects(self):
        self.assertEqual(rewards.parse_objects("a cat next to a dog"), ["cat", "dog"])
        self.assertEqual(rewards.parse_objects("An apple on side of the red car."),
                         ["apple", "red car"])
        self.assertIsNone(rewards.parse_objects("a photo of a cat"))

    def test_parity(self):
        self.assertAlmostEqual(rewards.statistical_parity([0, 0, 0, 0], 4), 0.75)
        self.assertAlmostEqual(rewards.statistical_parity([0, 1, 2, 3], 4), 0.0)

    def test_composition_server(self):
        httpd, url = start(["--reward", "composition", "--model", "demo_models:color_detector"])
        try:
            with urllib.request.urlopen(url + "/health", timeout=10) as r:
                self.assertEqual(json.loads(r.read())["status"], "ok")
            status, doc = post(url, {"images": [solid((220, 30, 30)), solid((30, 30, 220))],
                                     "prompts": ["a red ball and a blue box", "a cat"]})
            self.assertEqual(status, 200)
            self.assertEqual(doc["scores"], [0.5, None])  # red found, blue not; unparsed
            status, doc = post(url, {"images": ["not base64!"], "prompts": ["x"]})
            self.assertEqual(status, 400)
            self.assertIn("image 1", doc["error"])
        finally:
            httpd.shutdown()

    def test_parity_server(self):
        httpd, url = start(["--reward", "parity", "--model", "demo_models:brightness_classifier"])
        try:
            dark, light = solid((0, 0, 0)), solid((250, 250, 250))
            status, doc = post(url, {"images": [dark, dark, dark, light],
                                     "prompts": ["p"] * 4, "metadata": {"groups": [1, 1, 2, 2]}})
            self.assertEqual(status, 200)
            # group 1: both class 0 -> SP = (1 - 1/4)^2 + 3/16 = 0.75; group 2: 0 and 3 -> 0.25
            self.assertEqual([round(s, 6) for s in doc["scores"]], [-0.75, -0.75, -0.25, -0.25])
            self.assertEqual(doc["info"]["groups"], 2)
        finally:
            httpd.shutdown()


if __name__ == "__main__":
    unittest.main()
