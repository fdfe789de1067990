"""``medgpt web``: a gradio chat demo of the same streaming generation as ``medgpt infer``.

Bound to 127.0.0.1 unless the user names another host (then a warning says who can reach it); a
public gradio.live link only with ``--share``; a password with ``--auth``. Every request is bounded:
gradio's queue holds at most ``MAX_QUEUE_SIZE`` waiting requests (more are told the demo is busy),
one reply is generated at a time, the browser's message, system prompt, history and settings are
capped and fitted to the context by ``inference.fit_prompt`` (the reply starts with a note when
something was cut), and a reply stopped or abandoned in the browser stops generating.
gradio is an optional extra: ``pip install -e ".[web]"``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from contextlib import closing

from .inference import DEFAULT_LIMITS, ChatLimits, build_messages, fit_prompt, prompt_budget, stream_prompt

DISCLAIMER = ("**Educational use only: not medical advice.** A model trained in this course can be confidently wrong. "
              "In an emergency call your local emergency number (120 in mainland China).")
MAX_QUEUE_SIZE = 16  # requests waiting beyond this are refused with gradio's "busy, try again" message
CONCURRENCY = 1  # one reply at a time: replies share one model, and two at once only make both slower
MAX_NEW_TOKENS_RANGE = (8, 512)  # the slider's range; also enforced on what the browser sends
TEMPERATURE_RANGE = (0.0, 1.5)
PASSWORD_ENV = "MEDGPT_WEB_PASSWORD"  # `--auth USER` reads the password here (a command line is visible to `ps`)
NOTE_MARK = "⚠️ "  # starts the note above a reply that says what was cut; removed again from the history
_NOTE_LINE = re.compile(rf"^{re.escape(NOTE_MARK)}Note: [^\n]*\n+")


def _text(content) -> str:
    """gradio may hand a message's content as a string or as a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def with_note(reply: str, note: str) -> str:
    return f"{NOTE_MARK}{note}\n\n{reply}" if note else reply


def without_note(content: str) -> str:
    """A reply as the model wrote it: our note about cuts is for the reader, not for the next prompt."""
    return _NOTE_LINE.sub("", content, count=1)


def _clamp(value, low, high, kind):
    return min(max(kind(value), low), high)


def chat_fn(model, tokenizer, system_prompt: str | None, max_new_tokens: int, temperature: float,
            limits: ChatLimits = DEFAULT_LIMITS):
    """The ChatInterface callback: (message, history, system, temperature, max tokens) -> streamed text."""
    def respond(message, history, system=system_prompt, temp=temperature, max_tokens=max_new_tokens):
        turns = [{"role": m["role"], "content": without_note(_text(m["content"]))}  # the browser's copy: any size
                 for m in history[-limits.history_messages:] if m.get("role") in ("user", "assistant")]
        max_tokens = _clamp(max_tokens, *MAX_NEW_TOKENS_RANGE, int)  # the browser may send any number
        try:
            fitted = fit_prompt(tokenizer, build_messages(_text(message), turns, _text(system or "") or None),
                                prompt_budget(model, max_tokens), limits)
        except ValueError as err:
            raise _user_error(str(err)) from None
        reply = ""
        if fitted.note:  # shown at once, before the first token
            yield with_note(reply, fitted.note)
        temp = _clamp(temp, *TEMPERATURE_RANGE, float)
        with closing(stream_prompt(model, tokenizer, fitted.text, max_tokens, temp)) as pieces:  # Stop closes it
            for piece in pieces:
                reply += piece
                yield with_note(reply, fitted.note)
    return respond


def _user_error(message: str) -> Exception:
    import gradio as gr

    return gr.Error(message)


def build_demo(model, tokenizer, system_prompt: str | None = None, max_new_tokens: int = 128, temperature: float = 0.7,
               limits: ChatLimits = DEFAULT_LIMITS):
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit('medgpt web needs gradio: pip install -e ".[web]"') from None
    return gr.ChatInterface(
        chat_fn(model, tokenizer, system_prompt, max_new_tokens, temperature, limits),
        title="MedicalGPT Course chat",
        description=DISCLAIMER,
        additional_inputs=[
            # capped on the server, with a note: a max_length here would cut a paste silently
            gr.Textbox(value=system_prompt or "", label="System prompt"),
            gr.Slider(*TEMPERATURE_RANGE, value=temperature, step=0.05, label="Temperature (0 = greedy)"),
            gr.Slider(*MAX_NEW_TOKENS_RANGE, value=max_new_tokens, step=8, label="Max new tokens"),
        ],
        flagging_mode="never",
        analytics_enabled=False,  # no calls home from a local demo
    )


def credentials(spec: str | None, environ=os.environ) -> tuple[str, str] | None:
    """``--auth``: ``USER:PASSWORD``, or ``USER`` with the password in ``$MEDGPT_WEB_PASSWORD``; None without it."""
    if spec is None:
        return None
    user, colon, password = spec.partition(":")
    password = password if colon else environ.get(PASSWORD_ENV, "")
    if not user or not password:
        raise ValueError(f"--auth needs USER:PASSWORD, or USER with the password in ${PASSWORD_ENV}")
    return user, password


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (names other than localhost count as reachable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure(host: str, port: int, share: bool, auth) -> list[str]:
    """What to tell the person starting the demo about who can use it (never the password)."""
    private = is_loopback(host) and not share
    lines = [f"Serving on http://{host}:{port}" + (" (this machine only)" if private else "")]
    if not is_loopback(host):
        lines.append(f"WARNING: {host} is not a loopback address: every machine that can reach this one on port {port} "
                     "can use the model.")
    if share:
        lines.append("WARNING: also published at a public gradio.live link: anyone who has the link can use the model.")
    if not private and not auth:
        lines.append(f"WARNING: no password; add --auth USER (password in ${PASSWORD_ENV}) to require one.")
    elif auth:
        lines.append(f"Login required (user {auth[0]}).")
    return lines


def launch(model, tokenizer, system_prompt: str | None = None, max_new_tokens: int = 128, temperature: float = 0.7,
           host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
           auth: tuple[str, str] | None = None, max_queue: int = MAX_QUEUE_SIZE, limits: ChatLimits = DEFAULT_LIMITS):
    """Serve the demo; returns the gradio app (``block=False`` leaves it running in the background)."""
    demo = build_demo(model, tokenizer, system_prompt, max_new_tokens, temperature, limits)
    demo.queue(max_size=max_queue, default_concurrency_limit=CONCURRENCY)
    for line in exposure(host, port, share, auth):
        print(line)
    demo.launch(server_name=host, server_port=port, share=share, auth=auth, prevent_thread_lock=not block,
                quiet=not block)
    return demo
