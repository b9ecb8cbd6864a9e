"""Chat templates as untrusted input (--chat-context): a template that fails, is refused by Jinja's sandbox or runs
too long is the model's error, naming the file the template came from; it never hangs and is never called a bug."""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest

from lossgap.data import chat
from tests.helpers import run_cli

NESTED_LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
CASES = [  # (template, what the message says)
    ("{% for m in messages %}{{ m.content }}{% endfor %", "TemplateSyntaxError"),
    ("{{ raise_exception('this model has no user role') }}", "this model has no user role"),
    ("{{ ''.__class__.__mro__ }}", "SecurityError"),
    ("{% for i in range(10**9) %}x{% endfor %}", "The sandbox blocks ranges larger than"),
    ("{{ messages[0].content | no_such_filter }}", "no_such_filter"),
]


def model_with_template(llama_dir, folder, template, file="tokenizer_config.json"):
    shutil.copytree(llama_dir, folder)
    if file == "chat_template.jinja":
        (folder / file).write_text(template)
    else:
        config = json.loads((folder / file).read_text())
        config["chat_template"] = template
        (folder / file).write_text(json.dumps(config))
    return folder / file


def score_with_chat(capsys, model, out, corpus):
    return run_cli(capsys, "--model", model, "--corpus", corpus, "--out", out, "--seq-len", 64, "--chat-context")


@pytest.mark.parametrize(("template", "says"), CASES, ids=["syntax", "raises", "sandbox", "huge-range", "filter"])
def test_cli_a_broken_template_is_the_models_error_naming_its_file(tmp_path, llama_dir, pile_jsonl, capsys,
                                                                   template, says):
    source = model_with_template(llama_dir, tmp_path / "m", template)
    started = time.monotonic()
    code, _, err = score_with_chat(capsys, tmp_path / "m", tmp_path / "o", pile_jsonl)
    assert code == 1 and f"{source}: the chat template cannot be rendered" in err and says in err, err
    assert "internal error" not in err and "bug" not in err
    assert time.monotonic() - started < 30  # the range of 10**9 is refused at once, not run


NEEDS_TIMER = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no SIGALRM here: renders have no deadline")


@NEEDS_TIMER
def test_cli_a_template_that_loops_too_long_is_stopped_at_the_deadline(tmp_path, llama_dir, pile_jsonl, capsys):
    source = model_with_template(llama_dir, tmp_path / "m", NESTED_LOOP, "chat_template.jinja")
    started = time.monotonic()
    code, _, err = score_with_chat(capsys, tmp_path / "m", tmp_path / "o", pile_jsonl)
    elapsed = time.monotonic() - started
    assert code == 1 and f"{source}: the chat template did not finish rendering within 2 s" in err, err
    assert "internal error" not in err
    assert chat.RENDER_SECONDS <= elapsed < chat.RENDER_SECONDS + 30  # 10**10 steps would take hours


@NEEDS_TIMER
def test_the_deadline_puts_back_a_timer_already_running():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        with chat.deadline(0.5):
            pass
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 3.0 < remaining <= 5.0 and not fired
        with pytest.raises(chat.RenderTimeout), chat.deadline(0.05):
            while True:
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_cli_a_template_with_no_end_of_turn_token_is_refused_under_chat_end_of_turn(tmp_path, llama_dir, pile_jsonl,
                                                                                   capsys):
    source = model_with_template(llama_dir, tmp_path / "m", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    code, _, err = run_cli(capsys, "--model", tmp_path / "m", "--corpus", pile_jsonl, "--out", tmp_path / "o",
                           "--seq-len", 64, "--chat-context", "--chat-end-of-turn")
    assert code == 1 and f"{source}: the chat template puts nothing after the assistant's reply" in err, err
    assert "fix: drop --chat-end-of-turn for this model" in err and not (tmp_path / "o" / "tokens.parquet").exists()
