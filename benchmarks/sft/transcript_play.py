"""A short chat transcript of a model SFT'd on the "Which Shakespeare play?" set: `Pipeline.chat` on the first
held-out prompts (greedy confidence decoding, one token per step), each reply's denoising shown step by step
(▒ = [MASK], ⏎ = the line break that ends a turn; the [EOS] padding is cut).

usage: python benchmarks/sft/transcript_play.py MODEL TEST_JSONL [--n 3] [--cfg-scale 0] [--reply 8]
"""

from __future__ import annotations

import argparse
import json

from textdiffusion import Pipeline


def shown(tokenizer, ids: list[int]) -> str:
    """The reply positions as text: [MASK] as ▒, a line break as ⏎, up to the first [EOS]."""
    out = []
    for i in ids:
        if i == tokenizer.eos_id:
            break
        out.append("▒" if i == tokenizer.mask_id else tokenizer.decode([i]))
    return "".join(out).replace("\n", "⏎")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("test")
    parser.add_argument("--n", type=int, default=3, help="held-out prompts to answer")
    parser.add_argument("--cfg-scale", type=float, default=0.0)
    parser.add_argument("--reply", type=int, default=8, help="reply positions (and denoising steps)")
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    for line in list(open(args.test, encoding="utf-8"))[: args.n]:
        user, target = json.loads(line)["messages"]
        out = pipe.chat([user], max_new_tokens=args.reply, sampler="confidence", steps=args.reply, temperature=0.0,
                        cfg_scale=args.cfg_scale, return_frames=True, progress=False)
        print("user: " + user["content"].replace("\n", "\nuser: "))
        for frame in out.output.frames:
            print(f"  {frame.step:2d} | {shown(pipe.tokenizer, frame.ids[0, out.prompt_length:].tolist())}")
        print(f"assistant: {out.replies[0]}    (held-out answer: {target['content']})\n")


if __name__ == "__main__":
    main()
