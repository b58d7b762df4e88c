"""`textdiffusion serve MODEL_DIR`: a real server process that the openai client talks to, stopped by Ctrl-C,
answering only its own Host names by default; bad options are one line and exit status 2."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import openai

from textdiffusion.cli import main
from textdiffusion.cli.main import parse
from textdiffusion.serve import Limits


def test_serve_command_serves_a_model_folder(tmp_path, free_port, tiny_pipe):
    folder = tiny_pipe().save_pretrained(tmp_path / "tiny-model")
    port = free_port()
    limits = ["--max-n", "2", "--max-input-chars", "40", "--max-score-chars", "20", "--max-score-work", "30"]
    server = subprocess.Popen([sys.executable, "-m", "textdiffusion", "serve", str(folder), "--port", str(port),
                               *limits], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        # by default only the bound address and localhost are answered: a DNS-rebound name is not
        assert httpx.get(f"http://127.0.0.1:{port}/health", headers={"Host": f"evil.example:{port}"}).status_code == 400
        assert httpx.get(f"http://127.0.0.1:{port}/health", headers={"Host": f"localhost:{port}"}).status_code == 200
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny-model"]  # the folder's name
        out = client.completions.create(model="tiny-model", prompt="Hi", max_tokens=6, seed=0,
                                        extra_body={"steps": 3})
        assert out.usage.completion_tokens == 6
        try:
            client.completions.create(model="tiny-model", prompt="Hi", max_tokens=6, n=3)
        except openai.BadRequestError as exc:
            assert "limit of 2 samples per request (--max-n)" in exc.body["message"]  # --max-n reached the server
        else:
            raise AssertionError("n=3 passed a --max-n 2 server")
        # each limit reached the server: a request at it passes, one over it is a 400 that names the option
        base = f"http://127.0.0.1:{port}/v1"
        for path, body, over, knob in (
                ("/completions", {"prompt": "x" * 40, "max_tokens": 4, "steps": 2}, {"prompt": "x" * 41},
                 "limit of 40 per request (--max-input-chars)"),
                ("/infill", {"prompt": "x" * 34 + "[MASK]", "steps": 2}, {"prompt": "x" * 35 + "[MASK]"},
                 "limit of 40 per request (--max-input-chars)"),
                ("/score", {"input": "x" * 20, "t_samples": 1}, {"input": "x" * 21},
                 "limit of 20 per request (--max-score-chars)"),
                ("/score", {"input": "x" * 10, "t_samples": 3}, {"input": "x" * 10, "t_samples": 4},
                 "40 token-draws, more than this server's limit of 30 per request (--max-score-work)")):
            body = {"model": "tiny-model", **body}
            assert httpx.post(base + path, json=body, timeout=30).status_code == 200, (path, body)
            response = httpx.post(base + path, json={**body, **over}, timeout=30)
            assert response.status_code == 400 and knob in response.json()["error"]["message"], (path, over)
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode in (0, 130), output
    assert "Uvicorn running" in output


def test_bad_serve_options_are_one_line_and_status_2(tmp_path, capsys):
    for args, words in ([["--max-n", "0"], "--max-n must be positive"],
                        [["--max-input-chars", "0"], "--max-input-chars must be positive"],
                        [["--max-score-work", "-5"], "--max-score-work must be positive"],
                        [["--batch-wait-ms", "-1"], "--batch-wait-ms must be 0 or more"],
                        [["--batch-max-padding", "-0.5"], "--batch-max-padding must be 0 or more"],
                        [[str(tmp_path / "missing")], "missing"],
                        [["--allowed-hosts", "a.org,,b.org"], "--allowed-hosts must be a comma-separated list"]):
        assert main(["serve", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1


def test_every_engine_limit_is_a_serve_option_with_the_engines_default():
    args = vars(parse(["serve"]))
    for name, default in vars(Limits()).items():
        assert name in args, f"--{name.replace('_', '-')} is not an option of serve"
        assert args[name] == default, name


def test_batch_max_padding_reaches_the_batcher(tmp_path, tiny_pipe, monkeypatch):
    import uvicorn

    folder = tiny_pipe().save_pretrained(tmp_path / "tiny-model")
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))  # build the app, serve nothing
    for argv, padding in (([], 0.5), (["--batch-max-padding", "3"], 3.0)):
        assert main(["serve", str(folder), "--port", "0", *argv]) == 0
        assert served[-1].state.engine.batcher.max_padding == padding
