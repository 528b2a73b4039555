"""A real word-level tokenizer for the micro-ladder vocabulary, saved as PreTrainedTokenizerFast.

Built with the ``tokenizers`` library (WordLevel model, whitespace split, ``<s>`` prepended by
the post-processor) so ``AutoTokenizer.from_pretrained`` loads it offline, as vLLM would.
"""

from __future__ import annotations

from harvest.microladder.corpus import TOKEN_ID


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` whose ids match :data:`corpus.TOKEN_ID`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=dict(TOKEN_ID), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", TOKEN_ID["<s>"])]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="</s>", model_max_length=4096, clean_up_tokenization_spaces=False,
    )
