"""``medgpt web``: a gradio chat demo of the same streaming generation as ``medgpt infer``.

Bound to 127.0.0.1 unless the user names another host; a public gradio.live link only with
``--share``. gradio is an optional extra: ``pip install -e ".[web]"``.
"""

from __future__ import annotations

from .inference import build_messages, stream_reply

DISCLAIMER = ("**Educational use only: not medical advice.** A model trained in this course can be confidently wrong. "
              "In an emergency call your local emergency number (120 in mainland China).")


def _text(content) -> str:
    """gradio may hand a message's content as a string or as a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def chat_fn(model, tokenizer, system_prompt: str | None, max_new_tokens: int, temperature: float):
    """The ChatInterface callback: (message, history, system, temperature, max tokens) -> streamed text."""
    def respond(message, history, system=system_prompt, temp=temperature, max_tokens=max_new_tokens):
        turns = [{"role": m["role"], "content": _text(m["content"])} for m in history if m.get("role") in ("user", "assistant")]
        reply = ""
        for piece in stream_reply(model, tokenizer, build_messages(_text(message), turns, system or None),
                                  int(max_tokens), float(temp)):
            reply += piece
            yield reply
    return respond


def build_demo(model, tokenizer, system_prompt: str | None = None, max_new_tokens: int = 128, temperature: float = 0.7):
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit('medgpt web needs gradio: pip install -e ".[web]"') from None
    return gr.ChatInterface(
        chat_fn(model, tokenizer, system_prompt, max_new_tokens, temperature),
        title="MedicalGPT Course chat",
        description=DISCLAIMER,
        additional_inputs=[
            gr.Textbox(value=system_prompt or "", label="System prompt"),
            gr.Slider(0.0, 1.5, value=temperature, step=0.05, label="Temperature (0 = greedy)"),
            gr.Slider(8, 512, value=max_new_tokens, step=8, label="Max new tokens"),
        ],
        flagging_mode="never",
        analytics_enabled=False,  # no calls home from a local demo
    )


def launch(model, tokenizer, system_prompt: str | None = None, max_new_tokens: int = 128, temperature: float = 0.7,
           host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True):
    """Serve the demo; returns the gradio app (``block=False`` leaves it running in the background)."""
    demo = build_demo(model, tokenizer, system_prompt, max_new_tokens, temperature)
    print(f"Serving on http://{host}:{port}" + (" and a public gradio.live link" if share else " (this machine only)"))
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=not block)
    return demo
