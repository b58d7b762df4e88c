"""Chat data and templates (chat.py): the default template's exact text, a folder's own Jinja template, the
prompt / reply split SFT trains on, the SFT rows, and one-line errors for bad conversations."""

from __future__ import annotations

import json

import pytest
import torch

from textdiffusion.api.chat import (
    DEFAULT_TEMPLATE,
    apply_chat_template,
    check_messages,
    encode_chat,
    find_chat_template,
    read_conversations,
    turns,
)
from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.train.sft import chat_rows

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
CHATML = ("{% for m in messages %}{{ bos_token }}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_default_template_text_and_generation_prompt():
    tok = ByteTokenizer()
    text = apply_chat_template(tok, CONVERSATION[:2])
    assert text == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    assert apply_chat_template(tok, CONVERSATION[:3], add_generation_prompt=False).endswith("<|assistant|>\nHello.\n")
    assert encode_chat(tok, CONVERSATION[:2]) == list(text.encode())
    assert apply_chat_template(tok, CONVERSATION[:2], template=DEFAULT_TEMPLATE) == text


def test_every_assistant_turn_is_one_example_whose_prompt_is_the_history():
    tok = ByteTokenizer()
    pairs = turns(tok, CONVERSATION)
    assert len(pairs) == 2
    assert bytes(pairs[0][0]).decode() == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    assert bytes(pairs[0][1]).decode() == "Hello.\n"
    assert bytes(pairs[1][0]).decode() == apply_chat_template(tok, CONVERSATION[:4])
    assert bytes(pairs[1][1]).decode() == "4\n"


def test_rows_are_prompt_reply_and_eos_padding_scored_after_the_prompt():
    tok = ByteTokenizer()
    (p0, r0), (p1, r1) = turns(tok, CONVERSATION)
    length = len(p1) + len(r1) + 3
    ids, mask, dropped = chat_rows([CONVERSATION], tok, length)
    assert dropped == 0 and ids.shape == (2, length)
    for row, (p, r) in enumerate([(p0, r0), (p1, r1)]):
        assert ids[row].tolist() == p + r + [tok.eos_id] * (length - len(p) - len(r))
        assert mask[row].tolist() == [False] * len(p) + [True] * (length - len(p))
    # a row needs room for at least one [EOS] (to learn to stop): the second turn no longer fits
    ids, mask, dropped = chat_rows([CONVERSATION], tok, len(p1) + len(r1))
    assert dropped == 1 and len(ids) == 1 and torch.equal(ids[0, : len(p0)], torch.tensor(p0))


def test_a_folder_template_is_found_and_rendered_in_the_sandbox(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "bos_token": "<s>"}))
    assert find_chat_template(tmp_path) == CHATML
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "chat_template.jinja").write_text("x")
    assert find_chat_template(tmp_path) == CHATML  # the folder itself comes before its checkpoint/
    assert find_chat_template(tmp_path / "checkpoint") == "x"
    assert find_chat_template(tmp_path / "nothing") is None
    tok = ByteTokenizer()
    tok.chat_template = CHATML
    assert apply_chat_template(tok, CONVERSATION[1:2]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert bytes(turns(tok, CONVERSATION[1:3])[0][1]).decode() == "Hello.<|im_end|>\n"
    with pytest.raises(UserError, match="refused the messages: no system"):
        apply_chat_template(tok, CONVERSATION, template="{{ raise_exception('no system') }}")
    with pytest.raises(UserError, match="could not render"):
        apply_chat_template(tok, CONVERSATION, template="{{ messages.__class__.__mro__ }}")


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "bot", "content": "x"}], "role 'bot': use one of system, user, assistant"),
    ([{"role": "user", "content": 3}], "needs a string content"),
    (["hi"], "must be an object"),
])
def test_bad_messages_are_one_line_errors(messages, message):
    with pytest.raises(UserError, match=message):
        check_messages(messages)


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2 is not JSON"),
    ('{"text": "x"}', "line 2 has no \"messages\" field"),
    ('[{"role": "user", "content": "x"}]', "line 2 has no assistant message"),
    ('{"messages": [{"role": "user"}]}', "line 2: message 1 \\(user\\) needs a string content"),
])
def test_bad_conversation_files_name_the_line(tmp_path, line, message):
    good = json.dumps({"messages": CONVERSATION[1:3]})
    path = tmp_path / "chat.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(UserError, match=message):
        read_conversations(path)
    path.write_text(good + "\n\n" + json.dumps(CONVERSATION[1:3]) + "\n")  # a bare list works too; blanks skip
    assert read_conversations(path) == [CONVERSATION[1:3]] * 2


@pytest.mark.parametrize("template, message", [
    ("{{ 'A' * 4000000000 }}", "a repeated text or list of 4,000,000,000 items, over the limit of 1,000,000"),
    ("{{ [0] * 4000000000 }}", "a repeated text or list of 4,000,000,000 items"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "ranges of 1,100,000 items in all, over the limit of 1,000,000"),
    ("{{ 'a'|center(4000000000) }}", "a padded text of 4,000,000,000 characters"),
    ("{{ 10 ** 100000000 }}", "a number of 400,000,000 bits, over the limit of 64,000,000"),
    ("{% for i in range(20000) %}{{ 'x' * 100 }}{% endfor %}", "an output of 1,000,100 characters, over the limit"),
    ("{% set s = 'x' * 5000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",  # no range: characters
     "loops of 1,000,001 iterations in all, over the limit of 1,000,000"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "the chat template recurses without end"),
])
def test_templates_are_bounded_in_output_and_work(template, message):
    """A folder's template is user input: what would take all memory or time is refused in one line."""
    with pytest.raises(UserError, match="fix the model folder's chat template") as err:
        apply_chat_template(ByteTokenizer(), CONVERSATION[:2], template=template)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bounded_templates_still_loop_repeat_and_pad():
    template = ("{% for m in messages %}{{ '=' * 3 }}{{ m['role']|center(10) }}{% for i in range(2) %}{{ i }}"
                "{% endfor %}{% endfor %}{{ 2 ** 10 }}")
    assert apply_chat_template(ByteTokenizer(), CONVERSATION[:2], template=template) == \
        "===  system  01===   user   011024"
    looped = "{% for c in messages[0]['content'] %}{% if loop.last %}{{ loop.length }}{% endif %}{% endfor %}"
    assert apply_chat_template(ByteTokenizer(), CONVERSATION[:1], template=looped) == \
        str(len(CONVERSATION[0]["content"]))  # the counted loop keeps Jinja's loop variable
