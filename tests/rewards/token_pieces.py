"""Generated ids written as readable pieces, so expected per-token arrays follow from the pieces."""


def byte_symbol(byte: int) -> str:
    """The character byte-level BPE uses for one raw byte (GPT-2's printable remapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    if byte in printable:
        return chr(byte)
    return chr(256 + sum(1 for b in range(byte) if b not in printable))


def pieces_to_ids(tokenizer, pieces):
    """Generated ids, one per piece: a text that is one token of the vocabulary (looked up, not
    encoded, so non-canonical splits are possible), an int (a raw id, e.g. EOS), or bytes (one
    byte-level token per byte: splits a multi-byte character across tokens)."""
    vocab = tokenizer.get_vocab()

    def token_id(symbols):
        assert symbols in vocab, f"{symbols!r} is not one token of the vocabulary"
        return vocab[symbols]

    ids = []
    for piece in pieces:
        if isinstance(piece, int):
            ids.append(piece)
        elif isinstance(piece, bytes):
            ids.extend(token_id(byte_symbol(b)) for b in piece)
        else:
            ids.append(token_id("".join(byte_symbol(b) for b in piece.encode("utf-8"))))
    return ids
