"""The notebook's interactive chat: an ipywidgets front end over ``inference.ChatSession``.

Text box, Send and Clear buttons, temperature and max-token sliders, a system prompt, the
multi-turn history, and the reply streaming in as it is generated, with a note under it when the
question, the system prompt or older turns had to be cut to fit the model's context. Its callbacks
are plain methods, so a headless test can set the text and press Send (``widget.send_button.click()``).
"""

from __future__ import annotations

import html

from .inference import ChatSession

DISCLAIMER = ("Educational use only: not medical advice. In an emergency call your local emergency number "
              "(120 in mainland China).")


class ChatWidget:
    def __init__(self, session: ChatSession):
        import ipywidgets as widgets

        self.session = session
        self.question = widgets.Textarea(placeholder="Ask a medical question, e.g. What are the symptoms of influenza?",
                                         layout=widgets.Layout(width="100%", height="60px"))
        self.system_prompt = widgets.Text(value=session.system_prompt or "", description="System prompt",
                                          layout=widgets.Layout(width="100%"))
        self.temperature = widgets.FloatSlider(value=session.temperature, min=0.0, max=1.5, step=0.05,
                                               description="Temperature")
        self.max_new_tokens = widgets.IntSlider(value=session.max_new_tokens, min=8, max=512, step=8,
                                                description="Max tokens")
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane")
        self.clear_button = widgets.Button(description="Clear", icon="trash")
        self.transcript = widgets.HTML()
        self.send_button.on_click(self.on_send)
        self.clear_button.on_click(self.on_clear)
        self.box = widgets.VBox([
            widgets.HTML(f"<b>{html.escape(DISCLAIMER)}</b>"), self.system_prompt,
            widgets.HBox([self.temperature, self.max_new_tokens]), self.transcript, self.question,
            widgets.HBox([self.send_button, self.clear_button]),
        ])
        self._render()

    def _render(self, question: str | None = None, partial: str | None = None) -> None:
        turns = [(m["role"], m["content"]) for m in self.session.history]
        if question is not None:
            turns += [("user", question), ("assistant", (partial or "") + " ▌")]
        rows = [f"<p><b>{'You' if role == 'user' else 'Model'}:</b> {html.escape(text)}</p>" for role, text in turns]
        if self.session.notes:  # what the last question's prompt cut (set as soon as its reply starts)
            rows.append(f"<p class='medgpt-note'><i>⚠️ {html.escape(self.session.note)}</i></p>")
        self.transcript.value = "".join(rows) or "<p><i>No messages yet.</i></p>"

    def on_send(self, _button=None) -> None:
        """Send the text box's question with the current settings; stream the reply into the transcript."""
        question = self.question.value.strip()
        if not question:
            return
        self.question.value = ""
        self.session.system_prompt = self.system_prompt.value.strip() or None
        self.session.temperature = float(self.temperature.value)
        self.session.max_new_tokens = int(self.max_new_tokens.value)
        self.send_button.disabled = True
        try:
            reply, shown = "", question[: self.session.limits.message_chars]  # what the model can see of it at most
            for piece in self.session.stream(question):
                reply += piece
                self._render(shown, reply)
        finally:
            self.send_button.disabled = False
            self._render()

    def on_clear(self, _button=None) -> None:
        self.session.clear()
        self._render()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)


def chat_widget(model, tokenizer, system_prompt: str | None = None, max_new_tokens: int = 128,
                temperature: float = 0.7) -> ChatWidget:
    return ChatWidget(ChatSession(model, tokenizer, system_prompt, max_new_tokens, temperature))
