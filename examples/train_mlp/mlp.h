#pragma once
// The seed tutorial's model, trained: input -> Linear -> norm -> ReLU -> Linear -> classes, with softmax
// cross-entropy and SGD with momentum, on the handwritten digits (1797 images of 8 x 8 pixels, 10 classes).
// Eigen does the matrix products; every normalization, forward and backward, is a FusedNorm layer
// (fusednorm/layers.h) used as a PyTorch user would use nn.BatchNorm1d and its siblings.
#include <fusednorm/layers.h>

#include <Eigen/Core>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace train_mlp {

// Row-major, so that an (N, features) matrix is the dense (N, C) tensor FusedNorm's layers take, without a copy.
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowVector = Eigen::RowVectorXf;

// ---------------------------------------------------------------------------------------------------------------
// Data

struct Dataset {
  Matrix x;                 // (N, 64) pixel values scaled from 0..16 to 0..1
  std::vector<int> labels;  // N digits, 0..9
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

// The path scripts/bootstrap.sh extracts the data set to (.venv/share/fusednorm/digits.csv), set by the build.
std::string default_digits_path();
// Reads scikit-learn's digits.csv (64 pixel values and the label per line). Throws std::runtime_error naming the
// path and how to get the file when it is missing or malformed.
Dataset load_digits(const std::string& path);

struct Split {
  Dataset train, test;
};
// A shuffled split, the same for the same seed: test_fraction of the rows (rounded) go to the test set.
Split split_dataset(const Dataset& all, double test_fraction, uint32_t seed);

// ---------------------------------------------------------------------------------------------------------------
// Model

enum class Norm { none, batch, group, layer, rms };
enum class Placement { before_relu, after_relu };
const char* to_string(Norm norm);
const char* to_string(Placement placement);
std::optional<Norm> parse_norm(const std::string& name);

struct ModelConfig {
  int64_t inputs = 64, hidden = 64, classes = 10;
  Norm norm = Norm::batch;
  Placement placement = Placement::before_relu;
  int64_t groups = 8;  // GroupNorm(groups, hidden): 8 features per group of each sample
  // BatchNorm1d's momentum; std::nullopt is PyTorch's momentum=None, the cumulative average.
  std::optional<double> batch_norm_momentum = 0.1;
  // Multiplies both Linear layers' initial weights (PyTorch's default, U(-1/sqrt(in), 1/sqrt(in))).
  double init_scale = 1.0;
  // Where set, BatchNorm1d is a SyncBatchNorm over this group (not owned): data-parallel training, each process with
  // its part of every batch (sync_main.cpp).
  fusednorm::Communicator* process_group = nullptr;
};

struct Linear {
  Matrix weight, grad_weight;  // (out, in)
  RowVector bias, grad_bias;   // (out)
  Linear(int64_t in, int64_t out, double init_scale, std::mt19937& rng);
};

// A parameter for the optimiser and the tests: its values and the gradient the last backward left.
struct Parameter {
  std::string name;
  float* value;
  const float* grad;
  int64_t size;
};

// How evaluation normalizes in a model with BatchNorm: with the running statistics (PyTorch's model.eval()), or
// with the statistics of each evaluation batch (as if the model were left in training mode).
enum class EvalStatistics { running, batch };

class Mlp {
 public:
  Mlp(const ModelConfig& config, uint32_t seed);

  // Training step, forward: normalizes with batch statistics (BatchNorm updates its running ones) and keeps what
  // backward needs. Returns the mean cross-entropy over the batch.
  double forward(const Matrix& x, const std::vector<int>& labels);
  // The gradients of that mean loss with respect to every parameter (see parameters()).
  void backward();
  // Logits (N, classes) in evaluation. EvalStatistics::batch normalizes each `batch_size` rows with their own
  // statistics (a last chunk of one row joins the one before it: BatchNorm needs two values per channel).
  Matrix evaluate(const Matrix& x, EvalStatistics statistics = EvalStatistics::running, int64_t batch_size = 0);

  std::vector<Parameter> parameters();
  const ModelConfig& config() const { return config_; }
  Linear& linear1() { return linear1_; }
  Linear& linear2() { return linear2_; }
  fusednorm::NormLayer* norm() { return norm_.get(); }

 private:
  Matrix forward_logits(const Matrix& x, fusednorm::NormLayer* norm);

  ModelConfig config_;
  Linear linear1_, linear2_;
  std::unique_ptr<fusednorm::NormLayer> norm_;
  // What the training forward keeps: the input, the first Linear's output h, the norm's input and output (views
  // of them are held by the layer until backward), the second Linear's input a, and the softmax.
  Matrix x_, h_, norm_in_, norm_out_, a_, probabilities_;
  std::vector<int> labels_;
};

// Cross-entropy of softmax(logits) against labels, mean over rows, and the accuracy of the argmax. A row with a
// non-finite logit counts as wrong (a diverged model).
struct Scores {
  double loss, accuracy;
};
Scores score(const Matrix& logits, const std::vector<int>& labels);

// ---------------------------------------------------------------------------------------------------------------
// Training

// PyTorch's torch.optim.SGD with momentum (dampening 0, no Nesterov, no weight decay): v = mu v + g, p -= lr v.
class Sgd {
 public:
  Sgd(double learning_rate, double momentum) : learning_rate_(learning_rate), momentum_(momentum) {}
  void step(const std::vector<Parameter>& parameters);

 private:
  double learning_rate_, momentum_;
  std::vector<std::vector<float>> velocity_;
};

struct TrainConfig {
  double learning_rate = 0.1;
  double momentum = 0.9;
  int64_t batch_size = 64;
  int epochs = 20;
  uint32_t seed = 0;  // the model's initial weights and the batches' order
  // Also evaluate with batch statistics, in chunks of the training batch size (BatchNorm models only).
  bool evaluate_with_batch_statistics = false;
};

struct EpochRecord {
  int epoch;               // 1-based
  double train_loss;       // mean of the epoch's training-step losses
  double train_eval_loss;  // evaluation-mode loss and accuracy on the whole training set after the epoch
  double train_accuracy;
  double test_loss, test_accuracy;
  double test_accuracy_batch_statistics;  // NaN unless TrainConfig::evaluate_with_batch_statistics
};

struct RunResult {
  std::vector<EpochRecord> epochs;
  bool diverged = false;  // a training loss was not finite; training stopped there
  int64_t steps = 0;
};

// Trains a fresh model, shuffling the training set every epoch and dropping the last incomplete batch (a batch
// of one row has no batch statistics). After a non-finite loss the remaining epochs repeat the last evaluation.
RunResult train(const Split& data, const ModelConfig& model, const TrainConfig& training);

}  // namespace train_mlp
