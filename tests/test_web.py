"""`medgpt web`: the gradio demo, end to end in a real headless browser (Debian's chromium)."""

import os
import shutil
import socket

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
            browser.close()
    finally:
        demo.close()
    assert "symptoms of influenza" in user
    assert answer, "the demo showed an empty answer"


def test_web_demo_binds_to_localhost_unless_asked(tiny_base, monkeypatch):
    pytest.importorskip("gradio")
    from medgpt_utils import web

    seen = {}

    class FakeDemo:
        def launch(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(web, "build_demo", lambda *a, **k: FakeDemo())
    web.launch(None, None)
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False
