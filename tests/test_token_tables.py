"""The token tables of characters (`refresh_on`, `lexical_hop_stops`)."""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from retrolm.token_tables import character_table


def test_character_table_reads_tokens_as_they_appear_mid_text(tiny_dirs):
    """Byte tokens hold their own character; a sentencepiece-style "_word" (leading space, dropped when it is
    decoded alone) holds a space; special tokens hold none."""
    byte = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    table = character_table(byte, " \n", 320)
    assert table.shape == (320,)
    assert set(table.nonzero().flatten().tolist()) == {byte(c, add_special_tokens=False).input_ids[0] for c in " \n"}
    assert character_table(byte, "", 320) is None

    vocab = {"<unk>": 0, "\u2581a": 1, "b": 2, "\u2581": 3, ",": 4, "\u2581b,": 5}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    sentencepiece_like = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    assert sentencepiece_like.decode([1]) == "a"  # alone, the leading space is gone
    assert character_table(sentencepiece_like, " ", 6).nonzero().flatten().tolist() == [1, 3, 5]
    assert character_table(sentencepiece_like, ",", 6).nonzero().flatten().tolist() == [4, 5]
