"""`medgpt web`: the gradio demo, end to end in a real headless browser (Debian's chromium)."""

import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets MEDGPT_REQUIRE_BROWSER=1 after installing chromium, so there a missing browser fails instead of skipping.
REQUIRED = os.environ.get("MEDGPT_REQUIRE_BROWSER") == "1"


def _skip_or_fail(reason):
    if REQUIRED:
        pytest.fail(f"{reason} (MEDGPT_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_web_demo_streams_an_answer_into_a_real_browser(tiny_base):
    """An answer streams into the page, and a message over the cap gets an answer that says it was cut."""
    try:
        import gradio  # noqa: F401
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        _skip_or_fail(f"the web extra is not installed ({err.name}): pip install -e '.[web,test]'")
    if CHROMIUM is None:
        _skip_or_fail("no chromium browser on this machine (Debian: apt-get install chromium)")
    from medgpt_utils import inference, web

    model, tokenizer = inference.load_model(tiny_base, device="cpu")
    port = _free_port()
    demo = web.launch(model, tokenizer, max_new_tokens=24, temperature=0.0, port=port, block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            assert "Educational use only" in page.content()
            box = page.get_by_role("textbox").first
            box.fill("What are the symptoms of influenza?")
            box.press("Enter")
            bot = page.locator('[data-testid="bot"]').last
            bot.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => { const m = document.querySelectorAll('[data-testid=\"bot\"]'); "
                "return m.length && m[m.length - 1].innerText.trim().length > 0; }", timeout=60_000)
            user = page.locator('[data-testid="user"]').last.inner_text()
            answer = bot.inner_text().strip()
            box.fill("Why does my head hurt? " * 1500)  # 34,500 characters: over the message cap
            box.press("Enter")
            page.wait_for_function(
                "() => { const m = document.querySelectorAll('[data-testid=\"bot\"]'); "
                "return m.length > 1 && m[m.length - 1].innerText.includes('Note: your message was cut'); }",
                timeout=60_000)
            browser.close()
    finally:
        demo.close()
    assert "symptoms of influenza" in user
    assert answer, "the demo showed an empty answer"


class FakeDemo:
    """What `web.launch` asks of the gradio app, recorded."""

    def __init__(self):
        self.seen = {}

    def queue(self, **kwargs):
        self.seen["queue"] = kwargs

    def launch(self, **kwargs):
        self.seen.update(kwargs)


def _launch_fake(monkeypatch, capsys, **kwargs):
    from medgpt_utils import web

    demo = FakeDemo()
    monkeypatch.setattr(web, "build_demo", lambda *a, **k: demo)
    web.launch(None, None, **kwargs)
    return demo.seen, capsys.readouterr().out


def test_web_demo_binds_to_localhost_unless_asked(monkeypatch, capsys):
    pytest.importorskip("gradio")
    from medgpt_utils import web

    seen, out = _launch_fake(monkeypatch, capsys)
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False and seen["auth"] is None
    assert seen["queue"] == {"max_size": web.MAX_QUEUE_SIZE, "default_concurrency_limit": 1}
    assert "(this machine only)" in out and "WARNING" not in out


def test_web_demo_warns_when_other_machines_can_reach_it_and_never_prints_the_password(monkeypatch, capsys):
    pytest.importorskip("gradio")
    seen, out = _launch_fake(monkeypatch, capsys, host="0.0.0.0")
    assert "(this machine only)" not in out
    assert "WARNING: 0.0.0.0 is not a loopback address: every machine that can reach this one" in out
    assert "WARNING: no password; add --auth" in out
    seen, out = _launch_fake(monkeypatch, capsys, host="192.168.1.20", auth=("alice", "s3cret"))
    assert seen["auth"] == ("alice", "s3cret") and "not a loopback address" in out
    assert "no password" not in out and "s3cret" not in out and "Login required (user alice)" in out
    _, out = _launch_fake(monkeypatch, capsys, share=True)
    assert "public gradio.live link: anyone who has the link can use the model" in out and "no password" in out
    assert "(this machine only)" not in out
    _, out = _launch_fake(monkeypatch, capsys, host="::1")
    assert "(this machine only)" in out and "WARNING" not in out


def test_auth_option_takes_user_and_password_or_the_password_from_the_environment():
    from medgpt_utils import web

    assert web.credentials(None) is None
    assert web.credentials("alice:s3:cret") == ("alice", "s3:cret")
    assert web.credentials("alice", {web.PASSWORD_ENV: "s3cret"}) == ("alice", "s3cret")
    for bad in ("alice", "alice:", ":s3cret"):
        with pytest.raises(ValueError, match=r"--auth needs USER:PASSWORD, or USER with the password in \$MEDGPT_WEB_PASSWORD"):
            web.credentials(bad, {})


@pytest.fixture(scope="module")
def tiny_chat(tiny_base):
    from medgpt_utils import inference

    return inference.load_model(tiny_base, device="cpu")


@contextmanager
def _served(tiny_chat, **kwargs):
    """The real demo on a free local port; yields its address."""
    pytest.importorskip("gradio")
    from medgpt_utils import web

    model, tokenizer = tiny_chat
    port = _free_port()
    demo = web.launch(model, tokenizer, max_new_tokens=24, temperature=0.0, port=port, block=False, **kwargs)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def test_web_demo_with_auth_requires_the_password(tiny_chat, capsys):
    import httpx

    with _served(tiny_chat, auth=("alice", "s3cret")) as url:
        assert httpx.get(f"{url}/config").status_code == 401
        assert httpx.post(f"{url}/login", data={"username": "alice", "password": "wrong"}).status_code != 200
        with httpx.Client() as client:
            assert client.post(f"{url}/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
            assert client.get(f"{url}/config").status_code == 200
    assert "s3cret" not in capsys.readouterr().out


def test_web_queue_is_bounded_and_refuses_extra_requests_as_busy(tiny_chat):
    """One reply at a time, one waiting: a third request while one is being answered is refused with gradio's busy
    message. The first reply is held at its first forward pass until the others have been sent, so the order in
    which gradio takes the first request off its queue cannot decide the outcome."""
    from gradio_client import Client

    model, _ = tiny_chat
    first_reply_started, others_sent = threading.Event(), threading.Event()

    def hold_the_first_reply(*_):
        first_reply_started.set()
        others_sent.wait(timeout=60)

    handle = model.register_forward_hook(hold_the_first_reply)
    try:
        with _served(tiny_chat, max_queue=1) as url:
            client = Client(f"{url}/", verbose=False)
            jobs = [client.submit("What is gout?", "", 1.0, 200, api_name="/respond")]
            assert first_reply_started.wait(timeout=60), "the first reply never started"
            jobs += [client.submit("What is gout?", "", 1.0, 200, api_name="/respond") for _ in range(2)]
            deadline = time.monotonic() + 60
            while not any(job.done() for job in jobs[1:]) and time.monotonic() < deadline:
                time.sleep(0.01)
            others_sent.set()
            outcomes = []
            for job in jobs:
                try:
                    outcomes.append(("answered", job.result(timeout=120)))
                except Exception as err:  # gradio_client's QueueError
                    outcomes.append(("refused", str(err)))
    finally:
        others_sent.set()
        handle.remove()
    assert sorted(kind for kind, _ in outcomes) == ["answered", "answered", "refused"], outcomes
    assert [text for kind, text in outcomes if kind == "refused"] == ["Queue is full! Please try again."]


def test_web_stop_ends_the_generation(tiny_chat):
    """Stop (gradio's cancel) closes the reply: generation ends long before its 512 tokens, its thread is gone."""
    from gradio_client import Client

    model, _ = tiny_chat
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with _served(tiny_chat) as url:
            job = Client(f"{url}/", verbose=False).submit("What is gout?", "", 1.0, 512, api_name="/respond")
            deadline = time.monotonic() + 60
            while len(job.outputs()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(job.outputs()) >= 2, "the reply never started streaming"
            job.cancel()
            while _generation_threads() and time.monotonic() < deadline:
                time.sleep(0.05)
            stopped_at = len(calls)
            time.sleep(0.3)
    finally:
        handle.remove()
    assert not _generation_threads() and len(calls) == stopped_at < 300


def _generation_threads():
    return [t for t in threading.enumerate() if t.name == "medgpt-generate" and t.is_alive()]


def test_web_reply_starts_with_a_note_when_the_message_was_cut(tiny_chat):
    """A 9.5M-character message is capped before tokenizing and answered quickly, the reply says the message was cut,
    and the note is not sent back to the model with the next turn."""
    pytest.importorskip("gradio")
    from medgpt_utils import web

    model, tokenizer = tiny_chat
    respond = web.chat_fn(model, tokenizer, None, 8, 0.0)
    start = time.perf_counter()
    replies = list(respond("Why does my chest hurt? " * 400_000, [], "", 0.0, 8))
    assert time.perf_counter() - start < 5
    assert replies[0].startswith(f"{web.NOTE_MARK}Note: your message was cut to its first ")
    assert "of 9,600,000 characters" in replies[0] and replies[-1].startswith(replies[0]) and len(replies) > 1
    assert web.without_note(replies[-1]) == replies[-1][len(replies[0]):]


def test_web_sends_neither_notes_nor_out_of_range_settings_to_the_model(tiny_chat, monkeypatch):
    """The browser sends the history and the settings: notes are stripped, max tokens and temperature clamped."""
    pytest.importorskip("gradio")
    from medgpt_utils import web

    model, tokenizer = tiny_chat
    seen = {}

    def fake_stream(model, tokenizer, text, max_new_tokens, temperature):
        seen.update(text=text, max_new_tokens=max_new_tokens, temperature=temperature)
        yield "fine"

    monkeypatch.setattr(web, "stream_prompt", fake_stream)
    history = [{"role": "user", "content": "What is gout?"},
               {"role": "assistant", "content": web.with_note("A kind of arthritis.", "Note: something was cut.")}]
    replies = list(web.chat_fn(model, tokenizer, None, 8, 0.0)("And asthma?", history, "", 99.0, 10**9))
    assert replies == ["fine"]
    assert "A kind of arthritis." in seen["text"] and "Note:" not in seen["text"]
    assert seen["max_new_tokens"] == web.MAX_NEW_TOKENS_RANGE[1] and seen["temperature"] == web.TEMPERATURE_RANGE[1]
