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


def test_serve_command_serves_a_model_folder(tmp_path, free_port, tiny_pipe):
    folder = tiny_pipe().save_pretrained(tmp_path / "tiny-model")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "textdiffusion", "serve", str(folder), "--port", str(port),
                               "--max-n", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
            assert "limit of 2 samples" in exc.body["message"]  # --max-n reached the server
        else:
            raise AssertionError("n=3 passed a --max-n 2 server")
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode in (0, 130), output
    assert "Uvicorn running" in output


def test_bad_serve_options_are_one_line_and_status_2(tmp_path, capsys):
    for args, words in ([["--max-n", "0"], "--max-n must be positive"],
                        [["--batch-wait-ms", "-1"], "--batch-wait-ms must be 0 or more"],
                        [[str(tmp_path / "missing")], "missing"],
                        [["--allowed-hosts", "a.org,,b.org"], "--allowed-hosts must be a comma-separated list"]):
        assert main(["serve", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
