#include "mlp.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace train_mlp {

// ---------------------------------------------------------------------------------------------------------------
// Data

std::string default_digits_path() { return TRAIN_MLP_DIGITS_CSV; }

Dataset load_digits(const std::string& path) {
  std::ifstream file(path);
  if (!file)
    throw std::runtime_error("digits data set: cannot open '" + path +
                             "'; scripts/bootstrap.sh (run by make test and make demo) extracts it from "
                             "scikit-learn's wheel");
  constexpr int kPixels = 64;
  std::vector<float> pixels;
  std::vector<int> labels;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(file, line)) {
    line_number++;
    if (line.empty()) continue;
    std::stringstream fields(line);
    std::string field;
    std::vector<double> values;
    while (std::getline(fields, field, ',')) values.push_back(std::stod(field));
    if (values.size() != kPixels + 1 || values.back() < 0 || values.back() > 9)
      throw std::runtime_error("digits data set: " + path + ":" + std::to_string(line_number) + " has " +
                               std::to_string(values.size()) + " fields, expected 65 (64 pixels and a digit 0..9)");
    // Pixels are counts 0..16 of an 4 x 4 block: scaled to 0..1.
    for (int i = 0; i < kPixels; i++) pixels.push_back(static_cast<float>(values[static_cast<size_t>(i)] / 16.0));
    labels.push_back(static_cast<int>(values.back()));
  }
  if (labels.empty()) throw std::runtime_error("digits data set: '" + path + "' has no rows");
  Dataset data;
  data.labels = std::move(labels);
  data.x = Eigen::Map<Matrix>(pixels.data(), data.size(), kPixels);
  return data;
}

namespace {
Dataset take_rows(const Dataset& all, const std::vector<int64_t>& rows, size_t begin, size_t end) {
  Dataset part;
  part.x.resize(static_cast<int64_t>(end - begin), all.x.cols());
  for (size_t i = begin; i < end; i++) {
    part.x.row(static_cast<int64_t>(i - begin)) = all.x.row(rows[i]);
    part.labels.push_back(all.labels[static_cast<size_t>(rows[i])]);
  }
  return part;
}
}  // namespace

Split split_dataset(const Dataset& all, double test_fraction, uint32_t seed) {
  std::vector<int64_t> rows(static_cast<size_t>(all.size()));
  std::iota(rows.begin(), rows.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(rows.begin(), rows.end(), rng);
  const auto test_rows = static_cast<size_t>(std::lround(test_fraction * static_cast<double>(all.size())));
  return {take_rows(all, rows, test_rows, rows.size()), take_rows(all, rows, 0, test_rows)};
}

// ---------------------------------------------------------------------------------------------------------------
// Model

const char* to_string(Norm norm) {
  switch (norm) {
    case Norm::none: return "none";
    case Norm::batch: return "batch";
    case Norm::group: return "group";
    case Norm::layer: return "layer";
    case Norm::rms: return "rms";
  }
  return "?";
}

const char* to_string(Placement placement) {
  return placement == Placement::before_relu ? "before_relu" : "after_relu";
}

std::optional<Norm> parse_norm(const std::string& name) {
  for (Norm norm : {Norm::none, Norm::batch, Norm::group, Norm::layer, Norm::rms})
    if (name == to_string(norm)) return norm;
  return std::nullopt;
}

Linear::Linear(int64_t in, int64_t out, double init_scale, std::mt19937& rng)
    : weight(out, in), grad_weight(Matrix::Zero(out, in)), bias(out), grad_bias(RowVector::Zero(out)) {
  // PyTorch's nn.Linear initialisation (kaiming_uniform with a = sqrt(5) gives this bound), weights scaled.
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  std::uniform_real_distribution<float> uniform(-bound, bound);
  for (int64_t i = 0; i < weight.size(); i++) weight.data()[i] = static_cast<float>(init_scale) * uniform(rng);
  for (int64_t i = 0; i < bias.size(); i++) bias[i] = uniform(rng);
}

namespace {

std::unique_ptr<fusednorm::NormLayer> make_norm(const ModelConfig& config) {
  switch (config.norm) {
    case Norm::none: return nullptr;
    case Norm::batch: {
      const fusednorm::BatchNormLayerOptions options{.momentum = config.batch_norm_momentum};
      if (config.process_group) {
        return std::make_unique<fusednorm::SyncBatchNorm>(config.hidden, *config.process_group, options);
      }
      return std::make_unique<fusednorm::BatchNorm1d>(config.hidden, options);
    }
    case Norm::group: return std::make_unique<fusednorm::GroupNorm>(config.groups, config.hidden);
    case Norm::layer: return std::make_unique<fusednorm::LayerNorm>(std::vector<int64_t>{config.hidden});
    case Norm::rms: return std::make_unique<fusednorm::RMSNorm>(std::vector<int64_t>{config.hidden});
  }
  return nullptr;
}

fusednorm::TensorView view(Matrix& m) { return fusednorm::TensorView(m.data(), {m.rows(), m.cols()}); }

Matrix relu(const Matrix& m) { return m.cwiseMax(0.0f); }
// The gradient through a ReLU whose output (or input: the sign is the same) is `activation`.
Matrix relu_backward(const Matrix& grad, const Matrix& activation) {
  return (activation.array() > 0.0f).select(grad, 0.0f);
}

// Row-wise softmax, shifted by each row's largest logit so that exp never overflows.
Matrix softmax(const Matrix& logits) {
  Matrix p = (logits.colwise() - logits.rowwise().maxCoeff()).array().exp().matrix();
  p.array().colwise() /= p.rowwise().sum().array();
  return p;
}

}  // namespace

Mlp::Mlp(const ModelConfig& config, uint32_t seed)
    : config_(config),
      linear1_([&] {
        std::mt19937 rng(seed);
        return Linear(config.inputs, config.hidden, config.init_scale, rng);
      }()),
      linear2_([&] {
        std::mt19937 rng(seed + 0x9e3779b9u);
        return Linear(config.hidden, config.classes, config.init_scale, rng);
      }()),
      norm_(make_norm(config)) {}

Matrix Mlp::forward_logits(const Matrix& x, fusednorm::NormLayer* norm) {
  h_.noalias() = x * linear1_.weight.transpose();
  h_.rowwise() += linear1_.bias;
  norm_in_ = config_.placement == Placement::before_relu ? h_ : relu(h_);
  if (norm) {
    norm_out_.resize(norm_in_.rows(), norm_in_.cols());
    norm->forward(view(norm_in_), view(norm_out_));
  } else {
    norm_out_ = norm_in_;
  }
  a_ = config_.placement == Placement::before_relu ? relu(norm_out_) : norm_out_;
  Matrix logits = a_ * linear2_.weight.transpose();
  logits.rowwise() += linear2_.bias;
  return logits;
}

double Mlp::forward(const Matrix& x, const std::vector<int>& labels) {
  if (norm_) norm_->train();
  x_ = x;
  labels_ = labels;
  const Matrix logits = forward_logits(x_, norm_.get());
  probabilities_ = softmax(logits);
  return score(logits, labels).loss;
}

void Mlp::backward() {
  const auto n = static_cast<float>(x_.rows());
  // d(mean cross-entropy)/d(logits) = (softmax - onehot) / N.
  Matrix grad_logits = probabilities_;
  for (int64_t i = 0; i < grad_logits.rows(); i++) grad_logits(i, labels_[static_cast<size_t>(i)]) -= 1.0f;
  grad_logits /= n;

  linear2_.grad_weight.noalias() = grad_logits.transpose() * a_;
  linear2_.grad_bias = grad_logits.colwise().sum();
  Matrix grad = grad_logits * linear2_.weight;  // d a

  if (config_.placement == Placement::before_relu) grad = relu_backward(grad, a_);
  if (norm_) {
    Matrix grad_norm_in(grad.rows(), grad.cols());
    norm_->zero_grad();  // the layer accumulates its parameter gradients, as PyTorch's .grad does
    norm_->backward(view(grad), view(grad_norm_in));
    grad = std::move(grad_norm_in);
  }
  if (config_.placement == Placement::after_relu) grad = relu_backward(grad, h_);

  linear1_.grad_weight.noalias() = grad.transpose() * x_;
  linear1_.grad_bias = grad.colwise().sum();
}

Matrix Mlp::evaluate(const Matrix& x, EvalStatistics statistics, int64_t batch_size) {
  if (!norm_) return forward_logits(x, nullptr);
  if (statistics == EvalStatistics::running || config_.norm != Norm::batch) {
    // GroupNorm, LayerNorm and RMSNorm compute alike in both modes; BatchNorm reads its running statistics.
    norm_->eval();
    Matrix logits = forward_logits(x, norm_.get());
    norm_->train();
    return logits;
  }
  // PyTorch's BatchNorm normalizes with batch statistics in evaluation when it does not track running ones: the
  // trained weight and bias in such a layer give the model as if it were evaluated in training mode, without
  // touching the running statistics.
  fusednorm::BatchNorm1d batch_statistics(config_.hidden, {.track_running_stats = false});
  batch_statistics.weight() = norm_->weight();
  batch_statistics.bias() = norm_->bias();
  batch_statistics.eval();
  Matrix logits(x.rows(), config_.classes);
  const int64_t chunk = batch_size > 0 ? batch_size : x.rows();
  for (int64_t begin = 0; begin < x.rows();) {
    int64_t end = std::min(begin + chunk, x.rows());
    if (x.rows() - end == 1) end = x.rows();
    logits.middleRows(begin, end - begin) = forward_logits(x.middleRows(begin, end - begin), &batch_statistics);
    begin = end;
  }
  return logits;
}

std::vector<Parameter> Mlp::parameters() {
  std::vector<Parameter> p{
      {"linear1.weight", linear1_.weight.data(), linear1_.grad_weight.data(), linear1_.weight.size()},
      {"linear1.bias", linear1_.bias.data(), linear1_.grad_bias.data(), linear1_.bias.size()},
  };
  if (norm_ && !norm_->weight().empty())
    p.push_back({"norm.weight", norm_->weight().data(), norm_->grad_weight().data(),
                 static_cast<int64_t>(norm_->weight().size())});
  if (norm_ && !norm_->bias().empty())
    p.push_back(
        {"norm.bias", norm_->bias().data(), norm_->grad_bias().data(), static_cast<int64_t>(norm_->bias().size())});
  p.push_back({"linear2.weight", linear2_.weight.data(), linear2_.grad_weight.data(), linear2_.weight.size()});
  p.push_back({"linear2.bias", linear2_.bias.data(), linear2_.grad_bias.data(), linear2_.bias.size()});
  return p;
}

Scores score(const Matrix& logits, const std::vector<int>& labels) {
  double loss = 0;
  int64_t correct = 0;
  for (int64_t i = 0; i < logits.rows(); i++) {
    const int label = labels[static_cast<size_t>(i)];
    const auto row = logits.row(i).cast<double>();
    const double largest = row.maxCoeff();
    // log-sum-exp shifted by the largest logit; in float64, so a loss of a few hundred is still finite.
    loss += largest + std::log((row.array() - largest).exp().sum()) - row[label];
    int64_t best = 0;
    row.maxCoeff(&best);
    if (row.allFinite() && best == label) correct++;
  }
  const auto n = static_cast<double>(logits.rows());
  return {loss / n, static_cast<double>(correct) / n};
}

// ---------------------------------------------------------------------------------------------------------------
// Training

void Sgd::step(const std::vector<Parameter>& parameters) {
  if (velocity_.empty())
    for (const Parameter& p : parameters) velocity_.emplace_back(static_cast<size_t>(p.size), 0.0f);
  for (size_t k = 0; k < parameters.size(); k++) {
    const Parameter& p = parameters[k];
    std::vector<float>& v = velocity_[k];
    for (int64_t i = 0; i < p.size; i++) {
      v[static_cast<size_t>(i)] = static_cast<float>(momentum_) * v[static_cast<size_t>(i)] + p.grad[i];
      p.value[i] -= static_cast<float>(learning_rate_) * v[static_cast<size_t>(i)];
    }
  }
}

RunResult train(const Split& data, const ModelConfig& model_config, const TrainConfig& training) {
  Mlp model(model_config, training.seed);
  Sgd sgd(training.learning_rate, training.momentum);
  std::mt19937 rng(training.seed ^ 0x5eedu);
  std::vector<int64_t> order(static_cast<size_t>(data.train.size()));
  std::iota(order.begin(), order.end(), 0);
  const int64_t batch = training.batch_size, steps_per_epoch = data.train.size() / batch;
  Matrix x(batch, data.train.x.cols());
  std::vector<int> labels(static_cast<size_t>(batch));

  RunResult result;
  EpochRecord last{};
  for (int epoch = 1; epoch <= training.epochs; epoch++) {
    if (!result.diverged) {
      std::shuffle(order.begin(), order.end(), rng);
      double loss_sum = 0;
      for (int64_t step = 0; step < steps_per_epoch; step++) {
        for (int64_t i = 0; i < batch; i++) {
          const int64_t row = order[static_cast<size_t>(step * batch + i)];
          x.row(i) = data.train.x.row(row);
          labels[static_cast<size_t>(i)] = data.train.labels[static_cast<size_t>(row)];
        }
        const double loss = model.forward(x, labels);
        if (!std::isfinite(loss)) {
          result.diverged = true;
          break;
        }
        model.backward();
        sgd.step(model.parameters());
        loss_sum += loss;
        result.steps++;
      }
      last.epoch = epoch;
      last.train_loss =
          result.diverged ? std::numeric_limits<double>::quiet_NaN() : loss_sum / static_cast<double>(steps_per_epoch);
      const Scores train_scores = score(model.evaluate(data.train.x), data.train.labels);
      const Scores test_scores = score(model.evaluate(data.test.x), data.test.labels);
      last.train_eval_loss = train_scores.loss;
      last.train_accuracy = train_scores.accuracy;
      last.test_loss = test_scores.loss;
      last.test_accuracy = test_scores.accuracy;
      last.test_accuracy_batch_statistics = std::numeric_limits<double>::quiet_NaN();
      if (training.evaluate_with_batch_statistics && model_config.norm == Norm::batch)
        last.test_accuracy_batch_statistics =
            score(model.evaluate(data.test.x, EvalStatistics::batch, batch), data.test.labels).accuracy;
    }
    last.epoch = epoch;
    result.epochs.push_back(last);
  }
  return result;
}

}  // namespace train_mlp
