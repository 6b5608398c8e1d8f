"""Turn one raw preference row, in any of the formats below, into TRL's conversational preference format:

    {"prompt":   [{"role": "system" | "user" | "assistant", "content": str}, ...],
     "chosen":   [{"role": "assistant", "content": str}],
     "rejected": [{"role": "assistant", "content": str}]}

Formats (the caller has already renamed columns per `data.columns`; other columns are ignored):
    explicit        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
                    (prompt may be a message list, chosen/rejected lists of assistant messages)
    conversational  {"chosen":   [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                     "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}
    hh              {"chosen":   "\\n\\nHuman: Hi\\n\\nAssistant: Hello!",
                     "rejected": "\\n\\nHuman: Hi\\n\\nAssistant: Go away."}
    pairwise        {"prompt": "Hi", "response_a": "Hello!", "response_b": "Go away.", "winner": "model_a"}
                    or {"conversation_a": [...], "conversation_b": [...], "winner": "model_b"} (Chatbot Arena)
    sharegpt        {"conversations": [{"from": "human", "value": "Hi"}],
                     "chosen": {"from": "gpt", "value": "Hello!"}, "rejected": {"from": "gpt", "value": "Go away."}}

Where the prompt is implicit (conversational, hh, Chatbot Arena) it is every turn before the last one, which must be
an assistant reply, and it must be the same in both conversations. For a well-formed pair this is what TRL's
`extract_prompt` returns; unlike it, a pair whose histories differ is an error here, not a multi-turn completion.
Nothing is repaired: anything malformed raises RowError, and only pairwise ties are dropped (returned as None).
"""
import re

FORMATS = ("explicit", "conversational", "hh", "pairwise", "sharegpt")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
WINNERS = {"a": "a", "model_a": "a", "b": "b", "model_b": "b", "tie": None, "tie (bothbad)": None}
# A turn starts only at the text's start or after a blank line: "Human:" inside a turn is quoted text, not a turn.
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class RowError(ValueError):
    """A malformed row. `field` names the offending column; str(err) is a one-sentence reason that says what is wrong
    (and what was expected). The caller prefixes file and row number."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # a row that cannot be decoded reaches the worker processes as a RowError
        return RowError, (self.field, str(self))


def detect_format(row: dict) -> str:
    """Name of the format of this (first) row, one of FORMATS, decided from its keys and value types."""
    keys = set(row)
    if {"conversations", "chosen", "rejected"} <= keys:
        return "sharegpt"
    arena = {"conversation_a", "conversation_b"} <= keys
    if "winner" in keys and ({"prompt", "response_a", "response_b"} <= keys or arena):
        return "pairwise"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "explicit"
    if {"chosen", "rejected"} <= keys:
        chosen = row["chosen"]
        if isinstance(chosen, str) and re.search(r"(?:^|\n\n)Human:", chosen):
            return "hh"
        if isinstance(chosen, list):
            return "conversational"
    raise ValueError(
        f"The row has columns {sorted(keys)}, which match none of the recognised formats: "
        "explicit (prompt, chosen, rejected); "
        "conversational (chosen and rejected as lists of {role, content} messages, no prompt); "
        "hh (chosen and rejected as '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts); "
        "pairwise (prompt, response_a, response_b, winner; or conversation_a, conversation_b, winner); "
        "sharegpt (conversations, chosen, rejected). "
        "If your columns hold the same data under other names, set `data.columns` in params.yaml to map them, "
        "e.g. `data.columns: {prompt: question, chosen: response_j, rejected: response_k}`."
    )


def normalize_row(row: dict, fmt: str) -> dict | None:
    """Canonical row, or None when the row is a pairwise tie. Raises RowError for anything malformed."""
    if fmt not in NORMALIZERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return NORMALIZERS[fmt](row)


def explicit(row: dict) -> dict:
    """{"prompt": str | messages, "chosen": str | assistant messages, "rejected": same}"""
    return {"prompt": prompt_turns(column(row, "prompt"), "prompt"),
            "chosen": replies(column(row, "chosen"), "chosen"),
            "rejected": replies(column(row, "rejected"), "rejected")}


def conversational(row: dict) -> dict:
    """{"chosen": [user, assistant, ...], "rejected": [user, assistant, ...]}: the prompt is the shared history."""
    return split_pair(messages(column(row, "chosen"), "chosen"), messages(column(row, "rejected"), "rejected"),
                      "chosen", "rejected")


def hh(row: dict) -> dict:
    """{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": same}: Anthropic HH-RLHF transcripts."""
    return split_pair(hh_turns(column(row, "chosen"), "chosen"), hh_turns(column(row, "rejected"), "rejected"),
                      "chosen", "rejected")


def pairwise(row: dict) -> dict | None:
    """{"prompt", "response_a", "response_b", "winner"} or {"conversation_a", "conversation_b", "winner"}."""
    winner = column(row, "winner")
    label = winner.strip().lower() if isinstance(winner, str) else None
    if label not in WINNERS:
        raise RowError("winner", f"unknown winner label {winner!r}; expected one of {', '.join(WINNERS)} "
                                 "(case-insensitive)")
    if "conversation_a" in row:
        pair = split_pair(messages(column(row, "conversation_a"), "conversation_a"),
                          messages(column(row, "conversation_b"), "conversation_b"), "conversation_a", "conversation_b")
        a, b = pair["chosen"], pair["rejected"]
    else:
        pair = {"prompt": prompt_turns(column(row, "prompt"), "prompt")}
        a, b = replies(column(row, "response_a"), "response_a"), replies(column(row, "response_b"), "response_b")
    # Validate the whole row before dropping a tie, so a malformed row is reported as malformed, not as a tie.
    if WINNERS[label] is None:
        return None
    chosen, rejected = (a, b) if WINNERS[label] == "a" else (b, a)
    return {"prompt": pair["prompt"], "chosen": chosen, "rejected": rejected}


def sharegpt(row: dict) -> dict:
    """{"conversations": [{"from": "human", "value": ...}], "chosen": {"from": "gpt", "value": ...} | str, ...}"""
    turns = column(row, "conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("conversations", f"expected a non-empty list of {{from, value}} turns, got {describe(turns)}")
    prompt = [sharegpt_turn(turn, "conversations", n) for n, turn in enumerate(turns, 1)]
    # LLaMA-Factory keeps the system prompt in its own optional column; dropping it would change the prompt.
    if isinstance(row.get("system"), str) and row["system"]:
        prompt.insert(0, {"role": "system", "content": row["system"]})
    return {"prompt": prompt, "chosen": sharegpt_reply(column(row, "chosen"), "chosen"),
            "rejected": sharegpt_reply(column(row, "rejected"), "rejected")}


NORMALIZERS = {"explicit": explicit, "conversational": conversational, "hh": hh, "pairwise": pairwise,
               "sharegpt": sharegpt}


def column(row: dict, name: str):
    if name not in row:
        raise RowError(name, f"column missing; the row has {sorted(row)}")
    return row[name]


def describe(value) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def messages(value, field: str) -> list[dict]:
    """A validated list of {"role", "content"} messages. Other keys (e.g. None-filled struct fields that parquet
    adds) are ignored, as extra columns are."""
    if not isinstance(value, list) or not value:
        raise RowError(field, f"expected a non-empty list of {{role, content}} messages, got {describe(value)}")
    out = []
    for n, item in enumerate(value, 1):
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            raise RowError(field, f"message {n} must be a dict with 'role' and 'content', got {describe(item)}")
        if item["role"] not in ROLES:
            raise RowError(field, f"message {n} has unknown role {item['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(item["content"], str):
            raise RowError(field, f"message {n} content must be a string, got {describe(item['content'])}")
        out.append({"role": item["role"], "content": item["content"]})
    return out


def prompt_turns(value, field: str) -> list[dict]:
    """A prompt given as a string (one user turn) or as a message list."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return messages(value, field)
    raise RowError(field, f"expected a string or a list of messages, got {describe(value)}")


def replies(value, field: str) -> list[dict]:
    """A response given as a string (one assistant turn) or as a list of assistant messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list):
        raise RowError(field, f"expected a string or a list of assistant messages, got {describe(value)}")
    out = messages(value, field)
    roles = {m["role"] for m in out} - {"assistant"}
    if roles:
        raise RowError(field, f"a response may hold only assistant messages, found role(s) {sorted(roles)}")
    return out


def hh_turns(text, field: str) -> list[dict]:
    """Messages of a "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript, each turn's content stripped."""
    if not isinstance(text, str):
        raise RowError(field, f"expected a '\\n\\nHuman: ...\\n\\nAssistant: ...' transcript string, "
                              f"got {describe(text)}")
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise RowError(field, f"transcript has text before its first 'Human:' or 'Assistant:' turn: {parts[0]!r:.60}")
    return [{"role": HH_ROLES[speaker], "content": body.strip()} for speaker, body in zip(parts[1::2], parts[2::2])]


def split_pair(chosen: list[dict], rejected: list[dict], chosen_field: str, rejected_field: str) -> dict:
    """Prompt = the turns before each conversation's final assistant reply, which must be the same in both."""
    for conv, field in ((chosen, chosen_field), (rejected, rejected_field)):
        if not conv or conv[-1]["role"] != "assistant":
            last = f"ends with a {conv[-1]['role']} turn" if conv else "has no turns"
            raise RowError(field, f"conversation {last}; expected it to end with the assistant reply")
    prompt, other = chosen[:-1], rejected[:-1]
    if prompt != other:
        n = next(i for i, (x, y) in enumerate(zip(prompt + [None], other + [None])) if x != y)
        where = "from the first turn on (no shared prefix)" if n == 0 else f"after turn {n}"
        raise RowError(f"{chosen_field}/{rejected_field}",
                       f"the prompts (turns before the last assistant reply) differ {where}: "
                       f"{chosen_field} has {turn_summary(prompt, n)}, {rejected_field} has {turn_summary(other, n)}")
    if not prompt or prompt[-1]["role"] != "user":
        found = f"role {prompt[-1]['role']!r}" if prompt else "no turn"
        raise RowError(chosen_field, f"expected a user turn right before the last assistant reply, found {found}")
    return {"prompt": prompt, "chosen": chosen[-1:], "rejected": rejected[-1:]}


def turn_summary(turns: list[dict], n: int) -> str:
    if n >= len(turns):
        return "no more turns"
    return f"turn {n + 1} ({turns[n]['role']}: {turns[n]['content'][:50]!r})"


def sharegpt_turn(turn, field: str, n: int) -> dict:
    if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
        raise RowError(field, f"turn {n} must be a dict with 'from' and 'value', got {describe(turn)}")
    if not isinstance(turn["from"], str) or turn["from"] not in SHAREGPT_ROLES:
        raise RowError(field, f"turn {n} has unknown 'from' {turn['from']!r}; expected one of "
                              f"{', '.join(SHAREGPT_ROLES)}")
    if not isinstance(turn["value"], str):
        raise RowError(field, f"turn {n} value must be a string, got {describe(turn['value'])}")
    return {"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]}


def sharegpt_reply(value, field: str) -> list[dict]:
    """A ShareGPT response: {"from": "gpt", "value": str} or a plain string."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    message = sharegpt_turn(value, field, 1)
    if message["role"] != "assistant":
        raise RowError(field, f"expected a reply from 'gpt' (the assistant), got 'from': {value['from']!r}")
    return [message]
