#!/usr/bin/env python3
"""The peer of `wick train --objective seq2seq`: the GRU encoder + Bahdanau-attention GRU
decoder of PyTorch's "NLP From Scratch: Translation with a Sequence to Sequence Network and
Attention" tutorial (intermediate/seq2seq_translation_tutorial), trained on the same pairs
for the same wall-clock minutes, then scored on the same held-out split.

Kept from the tutorial: its word-level vocabulary and normalisation (lower case, ASCII,
letters and .!? only), EncoderRNN / BahdanauAttention / AttnDecoderRNN with hidden size 128
and dropout 0.1, batches of 32 padded to MAX_LENGTH, full teacher forcing, Adam lr 0.001,
NLLLoss, greedy decoding. Changed, so both models see the same task: the pairs are the
English -> French training pairs of the wick run (the tutorial's `reverse` flag off, no
prefix filter), MAX_LENGTH covers 99% of them instead of 10 (longer ones are dropped from
training, as the tutorial drops them), and training stops on a time budget instead of after
80 epochs.

BLEU is sacreBLEU's corpus BLEU on the tutorial's normalised text (hypotheses and references
both normalised). `--score FILE` scores another system's hypotheses (one per line, in
held-out order) the same way, so wick's translations can be compared on equal terms.

    python3 benches/peers/gru_attention_translate.py --pairs /tmp/fra/fra.txt \
        --heldout runs/transformer-tiny-fra/heldout.tsv --minutes 5 10 20
"""
import argparse
import random
import re
import time
import unicodedata

import sacrebleu
import torch
import torch.nn as nn
import torch.nn.functional as F

SOS_token, EOS_token = 0, 1


def unicode_to_ascii(s):
    return "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")


def normalize_string(s):
    s = unicode_to_ascii(s.lower().strip())
    s = re.sub(r"([.!?])", r" \1", s)
    s = re.sub(r"[^a-zA-Z!?]+", r" ", s)
    return s.strip()


class Lang:
    def __init__(self):
        self.word2index = {}
        self.index2word = {0: "SOS", 1: "EOS"}

    def add_sentence(self, sentence):
        for word in sentence.split(" "):
            if word not in self.word2index:
                self.word2index[word] = len(self.index2word)
                self.index2word[len(self.index2word)] = word

    @property
    def n_words(self):
        return len(self.index2word)


class EncoderRNN(nn.Module):
    def __init__(self, input_size, hidden_size, dropout_p=0.1):
        super().__init__()
        self.embedding = nn.Embedding(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, input):
        embedded = self.dropout(self.embedding(input))
        return self.gru(embedded)


class BahdanauAttention(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.Wa = nn.Linear(hidden_size, hidden_size)
        self.Ua = nn.Linear(hidden_size, hidden_size)
        self.Va = nn.Linear(hidden_size, 1)

    def forward(self, query, keys):
        scores = self.Va(torch.tanh(self.Wa(query) + self.Ua(keys)))
        scores = scores.squeeze(2).unsqueeze(1)
        weights = F.softmax(scores, dim=-1)
        return torch.bmm(weights, keys), weights


class AttnDecoderRNN(nn.Module):
    def __init__(self, hidden_size, output_size, max_length, dropout_p=0.1):
        super().__init__()
        self.max_length = max_length
        self.embedding = nn.Embedding(output_size, hidden_size)
        self.attention = BahdanauAttention(hidden_size)
        self.gru = nn.GRU(2 * hidden_size, hidden_size, batch_first=True)
        self.out = nn.Linear(hidden_size, output_size)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, encoder_outputs, encoder_hidden, target_tensor=None):
        batch_size = encoder_outputs.size(0)
        decoder_input = torch.full((batch_size, 1), SOS_token, dtype=torch.long)
        decoder_hidden = encoder_hidden
        decoder_outputs = []
        for i in range(self.max_length):
            decoder_output, decoder_hidden = self.forward_step(decoder_input, decoder_hidden, encoder_outputs)
            decoder_outputs.append(decoder_output)
            if target_tensor is not None:
                decoder_input = target_tensor[:, i].unsqueeze(1)  # teacher forcing
            else:
                _, topi = decoder_output.topk(1)
                decoder_input = topi.squeeze(-1).detach()
        decoder_outputs = torch.cat(decoder_outputs, dim=1)
        return F.log_softmax(decoder_outputs, dim=-1), decoder_hidden

    def forward_step(self, input, hidden, encoder_outputs):
        embedded = self.dropout(self.embedding(input))
        query = hidden.permute(1, 0, 2)
        context, _ = self.attention(query, encoder_outputs)
        output, hidden = self.gru(torch.cat((embedded, context), dim=2), hidden)
        return self.out(output), hidden


def to_ids(lang, sentence, max_length):
    ids = [lang.word2index[w] for w in sentence.split(" ") if w in lang.word2index][: max_length - 1]
    return ids + [EOS_token]


def padded(rows, max_length):
    t = torch.zeros((len(rows), max_length), dtype=torch.long)
    for i, r in enumerate(rows):
        t[i, : len(r)] = torch.tensor(r)
    return t


def translate(encoder, decoder, sources, input_lang, output_lang, max_length, batch=256):
    encoder.eval()
    decoder.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(sources), batch):
            x = padded([to_ids(input_lang, src, max_length) for src in sources[s : s + batch]], max_length)
            enc_out, enc_hidden = encoder(x)
            dec_out, _ = decoder(enc_out, enc_hidden)
            for row in dec_out.argmax(-1).tolist():
                words = []
                for idx in row:
                    if idx == EOS_token:
                        break
                    words.append(output_lang.index2word[idx])
                out.append(" ".join(words))
    encoder.train()
    decoder.train()
    return out


def bleu(hyps, refs):
    return sacrebleu.corpus_bleu([normalize_string(h) for h in hyps], [[normalize_string(r) for r in refs]]).score


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", required=True, help="source<TAB>target[<TAB>...] per line (fra.txt)")
    ap.add_argument("--heldout", required=True, help="the held-out pairs wick wrote (heldout.tsv)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[20.0], help="score at these training minutes")
    ap.add_argument("--score", help="only score these hypotheses (one per held-out line) and exit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()

    heldout = [l.rstrip("\n").split("\t")[:2] for l in open(args.heldout, encoding="utf-8") if l.strip()]
    refs = [t for _, t in heldout]
    if args.score:
        hyps = [l.rstrip("\n") for l in open(args.score, encoding="utf-8")]
        assert len(hyps) == len(refs), f"{len(hyps)} hypotheses for {len(refs)} references"
        print(f"BLEU (tutorial-normalised) of {args.score}: {bleu(hyps, refs):.2f}")
        return

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    held = {tuple(p) for p in heldout}
    pairs = []
    for line in open(args.pairs, encoding="utf-8"):
        cols = line.rstrip("\n").split("\t")
        if len(cols) >= 2 and tuple(cols[:2]) not in held:
            pairs.append((normalize_string(cols[0]), normalize_string(cols[1])))
    lengths = sorted(max(len(a.split()), len(b.split())) for a, b in pairs)
    max_length = lengths[int(0.99 * (len(lengths) - 1))] + 1  # + EOS
    pairs = [p for p in pairs if max(len(p[0].split()), len(p[1].split())) < max_length]
    input_lang, output_lang = Lang(), Lang()
    for a, b in pairs:
        input_lang.add_sentence(a)
        output_lang.add_sentence(b)
    print(f"GRU+attention peer: {len(pairs)} training pairs, MAX_LENGTH {max_length}, "
          f"vocab {input_lang.n_words} -> {output_lang.n_words}, {torch.get_num_threads()} threads")

    hidden_size, batch_size = 128, 32
    encoder = EncoderRNN(input_lang.n_words, hidden_size)
    decoder = AttnDecoderRNN(hidden_size, output_lang.n_words, max_length)
    n_params = sum(p.numel() for m in (encoder, decoder) for p in m.parameters())
    print(f"parameters   {n_params / 1e6:.2f}M")
    enc_opt = torch.optim.Adam(encoder.parameters(), lr=0.001)
    dec_opt = torch.optim.Adam(decoder.parameters(), lr=0.001)
    criterion = nn.NLLLoss()
    src_ids = [to_ids(input_lang, a, max_length) for a, _ in pairs]
    tgt_ids = [to_ids(output_lang, b, max_length) for _, b in pairs]

    marks = sorted(args.minutes)
    trained, step, epoch, loss_sum = 0.0, 0, 0, 0.0
    sources = [s for s, _ in heldout]
    while marks:
        epoch += 1
        order = list(range(len(pairs)))
        random.shuffle(order)
        for s in range(0, len(order), batch_size):
            t0 = time.perf_counter()
            idx = order[s : s + batch_size]
            x = padded([src_ids[i] for i in idx], max_length)
            y = padded([tgt_ids[i] for i in idx], max_length)
            enc_opt.zero_grad()
            dec_opt.zero_grad()
            enc_out, enc_hidden = encoder(x)
            dec_out, _ = decoder(enc_out, enc_hidden, y)
            loss = criterion(dec_out.view(-1, dec_out.size(-1)), y.view(-1))
            loss.backward()
            enc_opt.step()
            dec_opt.step()
            trained += time.perf_counter() - t0
            step += 1
            loss_sum += loss.item()
            if step % 200 == 0:
                print(f"step {step} epoch {epoch} loss {loss_sum / 200:.4f} ({trained / 60:.1f} min)", flush=True)
                loss_sum = 0.0
            if marks and trained >= marks[0] * 60:
                hyps = translate(encoder, decoder, [normalize_string(x) for x in sources], input_lang, output_lang, max_length)
                print(f"BLEU at {marks[0]:g} training minutes (step {step}, epoch {epoch}): {bleu(hyps, refs):.2f}", flush=True)
                for src, hyp in list(zip(sources, hyps))[:5]:
                    print(f"  {src} -> {hyp}")
                marks.pop(0)
                if not marks:
                    break


if __name__ == "__main__":
    main()
