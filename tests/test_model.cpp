// The real model (SmolLM2-135M, fetched by scripts/fetch_model.sh): tokenizer round
// trips, prefill equal to step-by-step decode, a sensible continuation and perplexity,
// the dump's contents, and perplexity with the cache in the loop. Skipped, with the
// reason, when the model is not in the cache.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <array>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "analysis/perplexity.h"
#include "core/metrics.h"
#include "cpu_ref/attention.h"
#include "cpu_ref/tensor_cache.h"
#include "data/kv_dump.h"
#include "data/llama.h"
#include "data/synth.h"
#include "data/tokenizer.h"

namespace kvq {
namespace {

class Model : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::ifstream(data::default_model_path()).good()) return;
    gguf_ = new data::GgufFile(data::default_model_path());
    tokenizer_ = new data::Tokenizer(*gguf_);
    model_ = new data::LlamaModel(*gguf_);
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokenizer_;
    delete gguf_;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << data::default_model_path() << " is not in the cache: run scripts/fetch_model.sh";
  }
  static std::vector<int> text_tokens(int n) {
    std::stringstream s;
    s << std::ifstream("/usr/share/common-licenses/GPL-3").rdbuf();
    auto ids = tokenizer_->encode(s.str());
    ids.resize(static_cast<std::size_t>(n));
    return ids;
  }
  static data::Matrix exact(const std::vector<int>& ids) {
    return model_->forward(ids, [](int, const data::Matrix& q, const data::Matrix& k, const data::Matrix& v,
                                   data::Matrix& o) { model_->causal_attention(q, k, v, o); });
  }
  static inline data::GgufFile* gguf_ = nullptr;
  static inline data::Tokenizer* tokenizer_ = nullptr;
  static inline data::LlamaModel* model_ = nullptr;
};

TEST_F(Model, ConfigIsSmolLM2) {
  const auto& c = model_->config();
  EXPECT_EQ(c.layers, 30);
  EXPECT_EQ(c.heads, 9);
  EXPECT_EQ(c.kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab, 49152);
}

TEST_F(Model, TokenizerRoundTripsVariedText) {
  const std::vector<std::string> texts = {
      "The capital of France is Paris.",
      "  leading spaces, trailing spaces   \n\n\ttabs\tand\r\nCRLF",
      "Numbers 2024, 3.14159 and -42; emails a.b@c.org; URLs https://x.y/z?q=1",
      "Unicode: café naïve Straße, Ελληνικά, русский, 中文字符, 日本語, 한국어, emoji 😀🎉",
      "Code: for (int i = 0; i < n; ++i) { x[i] += y[i] * 2; } // done",
      "Contractions: it's, don't, we'll, they're, I've, she'd, I'm",
      "",
      "\n",
  };
  for (const auto& t : texts) EXPECT_EQ(tokenizer_->decode(tokenizer_->encode(t)), t) << t;
  // Whole words with their leading space are single tokens; digits are split one by one.
  std::vector<std::string> pieces;
  for (int id : tokenizer_->encode("The capital of France is")) pieces.push_back(tokenizer_->token(id));
  EXPECT_EQ(pieces, (std::vector<std::string>{"The", "\xC4\xA0" "capital", "\xC4\xA0" "of", "\xC4\xA0" "France", "\xC4\xA0" "is"}));
  EXPECT_EQ(tokenizer_->encode("2024").size(), 4u);
}

TEST_F(Model, PrefillLogitsEqualStepByStepDecode) {
  const auto ids = text_tokens(40);
  const data::Matrix hidden = exact(ids);
  const data::Matrix prefill = model_->logits(hidden, 0, 40);
  data::LlamaModel::KvCache cache;
  double worst = 0;
  for (int t = 0; t < 40; ++t) {
    const Eigen::VectorXf step = model_->decode(ids[t], cache);
    worst = std::max(worst, static_cast<double>((step.transpose() - prefill.row(t)).cwiseAbs().maxCoeff()));
  }
  EXPECT_LT(worst, 1e-4);  // logits are O(10): fp32 GEMM vs GEMV summation order only
}

TEST_F(Model, GreedyContinuationKnowsTheCapitalOfFrance) {
  data::LlamaModel::KvCache cache;
  Eigen::VectorXf logits;
  for (int id : tokenizer_->encode("The capital of France is")) logits = model_->decode(id, cache);
  std::vector<int> out;
  for (int i = 0; i < 8; ++i) {
    Eigen::Index best;
    logits.maxCoeff(&best);
    out.push_back(static_cast<int>(best));
    logits = model_->decode(out.back(), cache);
  }
  EXPECT_NE(tokenizer_->decode(out).find("Paris"), std::string::npos) << tokenizer_->decode(out);
}

TEST_F(Model, PerplexityOnTheBundledTextIsInTheExpectedRange) {
  // A 135M model on English legal prose: measured 19.3 over the first 1024 tokens of GPL-3;
  // GPT-2 small (124M) scores roughly 20-40 on web text.
  const auto ids = text_tokens(512);
  const data::Matrix hidden = exact(ids);
  const data::Matrix logits = model_->logits(hidden, 0, 511);
  double nll = 0;
  for (int t = 0; t < 511; ++t) {
    const float m = logits.row(t).maxCoeff();
    const double lse = m + std::log((logits.row(t).array() - m).exp().cast<double>().sum());
    nll += lse - logits(t, ids[t + 1]);
  }
  const double ppl = std::exp(nll / 511);
  EXPECT_GT(ppl, 8.0);
  EXPECT_LT(ppl, 40.0);
}

TEST_F(Model, PplWithoutQuantizationIsExactlyTheForwardPass) {
  const auto ids = text_tokens(160);
  const int P = 100;
  const auto results = analysis::perplexity(*model_, ids, {preset("none"), preset("fp16"), preset("innerq_hybrid")},
                                            {P}, false);
  // The forward pass's own perplexity over the same predictions.
  const data::Matrix logits = model_->logits(exact(ids), P, 159);
  double nll = 0;
  for (int t = P; t < 159; ++t) {
    const auto row = logits.row(t - P);
    double m = row.maxCoeff(), sum = 0;
    for (int j = 0; j < row.size(); ++j) sum += std::exp(row(j) - m);
    nll -= row(ids[t + 1]) - m - std::log(sum);
  }
  nll /= 159 - P;
  ASSERT_EQ(results.size(), 4u);  // the exact cache first, then the three specs
  // Preset none runs the same arithmetic as the plain forward pass: identical hidden states, bit for bit.
  const data::Matrix plain = exact(ids), looped = analysis::forward_with_cache(*model_, ids, preset("none"), P);
  EXPECT_TRUE(plain == looped);
  EXPECT_NEAR(results[1].nll, nll, 1e-12 * nll);  // only the test's own log-sum-exp rounds differently
  EXPECT_EQ(results[1].nll, results[0].nll);
  EXPECT_EQ(results[1].top1, 1.0);
  EXPECT_EQ(results[1].kl, 0.0);
  EXPECT_LT(std::fabs(results[2].ppl / results[0].ppl - 1), 1e-3);  // fp16 within 0.1%
  EXPECT_GT(results[3].kl, results[2].kl);  // quantization moves the distribution more than fp16 rounding
}

// The certified softmax bound on the real model's caches: for every query of every query head of
// three layers, (e^(2 eps) - 1)/2 is never below the measured TV, for each family of methods.
TEST_F(Model, TvBoundHoldsPerQueryOnRealCaches) {
  const int T = 96, P = 48;
  const auto ids = text_tokens(T);
  const auto& cfg = model_->config();
  const int d = cfg.head_dim, group = cfg.heads / cfg.kv_heads;
  std::map<int, std::array<data::Matrix, 3>> captured;  // layer -> q, k, v
  model_->forward(ids, [&](int layer, const data::Matrix& q, const data::Matrix& k, const data::Matrix& v, data::Matrix& o) {
    if (layer == 0 || layer == 15 || layer == 29) captured[layer] = {q, k, v};
    model_->causal_attention(q, k, v, o);
  });
  ASSERT_EQ(captured.size(), 3u);
  int checked = 0;
  for (const auto& [layer, qkv] : captured) {
    const auto& [q, k, v] = qkv;
    // Per kv head rows, and the omni-token scales over all kv heads.
    std::vector<std::vector<float>> keys(static_cast<std::size_t>(cfg.kv_heads)), values(keys.size());
    std::vector<const float*> kp, vp;
    for (int h = 0; h < cfg.kv_heads; ++h) {
      for (int t = 0; t < T; ++t)
        for (int c = 0; c < d; ++c) {
          keys[h].push_back(k(t, h * d + c));
          values[h].push_back(v(t, h * d + c));
        }
      kp.push_back(keys[h].data());
      vp.push_back(values[h].data());
    }
    const auto ks = cpu::omni_token_scale(kp, T, d), vs = cpu::omni_token_scale(vp, T, d);
    for (const char* name : {"kivi", "innerq_hybrid", "oscar", "turbo3", "q4_0"}) {
      const CacheSpec spec = preset(name);
      for (int h = 0; h < cfg.kv_heads; ++h) {
        auto kc = cpu::make_cache(spec, TensorKind::key, d), vc = cpu::make_cache(spec, TensorKind::value, d);
        kc.prefill(keys[h].data(), P, ks.data());
        vc.prefill(values[h].data(), P, vs.data());
        cpu::AttentionResult got;
        cpu::ReferenceAttention want;
        for (int t = P; t < T; ++t) {
          kc.append(&keys[h][static_cast<std::size_t>(t) * d], ks[t]);
          vc.append(&values[h][static_cast<std::size_t>(t) * d], vs[t]);
          for (int g = 0; g < group; ++g) {
            const float* qt = q.row(t).data() + (h * group + g) * d;
            cpu::quantized_attention(kc, vc, qt, got);
            cpu::reference_attention(keys[h].data(), values[h].data(), t + 1, d, qt, want);
            const AttentionMetrics m = attention_metrics(want.scores, want.probs, want.output, got.scores, got.probs, got.output);
            ASSERT_GE(m.tv_bound, m.tv) << name << " layer " << layer << " head " << h << " position " << t;
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 3 * 5 * cfg.heads * (T - P));
}

TEST_F(Model, DumpWritesEveryLayerInTheFormat) {
  const std::string out = ::testing::TempDir() + "kvq_dump_" + std::to_string(::getpid()) + ".h5";
  const std::string command = std::string(KVQ_BINARY) + " dump --tokens 48 --out " + out + " >/dev/null";
  ASSERT_EQ(std::system(command.c_str()), 0);
  data::DumpReader dump(out);
  const auto& info = dump.info();
  EXPECT_EQ(info.num_layers, 30);
  EXPECT_EQ(info.num_heads, 9);
  EXPECT_EQ(info.num_kv_heads, 3);
  EXPECT_EQ(info.head_dim, 64);
  EXPECT_EQ(info.seq_len, 48);
  EXPECT_TRUE(info.has_queries && info.has_keys_pre_rope);
  EXPECT_EQ(info.source, "gguf:SmolLM2-135M-Instruct.Q4_1.gguf");
  EXPECT_EQ(info.text_sha256.value().size(), 64u);
  EXPECT_EQ(info.rope_theta.value(), 100000.0);
  EXPECT_NO_THROW(dump.check_finite());
  // Keys are the pre-RoPE keys rotated in the Hugging Face layout (pairs i, i + d/2).
  std::vector<float> pre, post;
  for (int layer : {0, 29}) {
    dump.read_slab(data::Dataset::keys_pre_rope, layer, 2, pre);
    dump.read_slab(data::Dataset::keys, layer, 2, post);
    data::apply_rope(pre, 48, 64, 100000.0);
    for (std::size_t i = 0; i < pre.size(); ++i) ASSERT_NEAR(pre[i], post[i], 1e-4 * (1 + std::fabs(post[i])));
  }
  std::remove(out.c_str());
}

}  // namespace
}  // namespace kvq
