// Trains the seed tutorial's model (digits -> Linear(64, 64) -> norm -> ReLU -> Linear(64, 10)) and runs the
// experiments that test the tutorial's claims about BatchNorm, each over several seeds:
//
//   train_mlp                                  one run, BatchNorm, its curve on stdout
//   train_mlp --norm none --lr 0.5 --epochs 5  one run with other settings
//   train_mlp --experiment lr,init --csv runs.csv --seeds 5
//
// Experiments (--experiment, comma-separated, or all):
//   lr         no norm vs BatchNorm, learning rates 0.01 .. 2.0          (convergence, higher rates, regularization)
//   init       no norm vs BatchNorm, initial weights scaled 0.01 .. 10   (sensitivity to initialization)
//   placement  BatchNorm before vs after the ReLU, learning rates 0.1 and 1.0
//   batch      batch sizes 2, 4, 8, 64 with BatchNorm, GroupNorm, LayerNorm, RMSNorm and no norm
//   eval       BatchNorm evaluated with running statistics vs each batch's own statistics
//   momentum   BatchNorm's running statistics with momentum 0.1 vs the cumulative average (momentum None)
// Every run appends one CSV row per epoch; scripts/plot_demo.py draws and tabulates them (make demo).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlp.h"

namespace {

using namespace train_mlp;

struct Run {
  std::string experiment;
  ModelConfig model;
  TrainConfig training;
};

struct Options {
  std::string data = default_digits_path();
  std::vector<std::string> experiments;
  std::string csv;
  int seeds = 5;
  std::optional<int> epochs;
  Run single{"single", {}, {}};
};

const std::vector<std::string> kExperiments{"lr", "init", "placement", "batch", "eval", "momentum"};

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) parts.push_back(part);
  return parts;
}

[[noreturn]] void usage(const std::string& problem) {
  std::fprintf(stderr,
               "train_mlp: %s\n"
               "usage: train_mlp [--data digits.csv] [--experiment lr,init,placement,batch,eval,momentum|all]\n"
               "                 [--seeds N] [--epochs N] [--csv out.csv]\n"
               "                 [--norm none|batch|group|layer|rms] [--placement before_relu|after_relu]\n"
               "                 [--lr X] [--batch N] [--init-scale X] [--momentum X|none] [--seed N]\n",
               problem.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(flag + " needs a value");
      return argv[++i];
    };
    try {
      if (flag == "--data")
        o.data = value();
      else if (flag == "--experiment") {
        const std::string v = value();
        o.experiments = v == "all" ? kExperiments : split_commas(v);
        for (const std::string& e : o.experiments)
          if (std::find(kExperiments.begin(), kExperiments.end(), e) == kExperiments.end())
            usage("--experiment: '" + e + "' is not one of lr, init, placement, batch, eval, momentum, all");
      } else if (flag == "--csv")
        o.csv = value();
      else if (flag == "--seeds")
        o.seeds = std::stoi(value());
      else if (flag == "--epochs")
        o.epochs = std::stoi(value());
      else if (flag == "--norm") {
        const std::string v = value();
        const auto norm = parse_norm(v);
        if (!norm) usage("--norm: '" + v + "' is not one of none, batch, group, layer, rms");
        o.single.model.norm = *norm;
      } else if (flag == "--placement") {
        const std::string v = value();
        if (v != "before_relu" && v != "after_relu") usage("--placement: '" + v + "' is not before_relu or after_relu");
        o.single.model.placement = v == "before_relu" ? Placement::before_relu : Placement::after_relu;
      } else if (flag == "--lr")
        o.single.training.learning_rate = std::stod(value());
      else if (flag == "--batch")
        o.single.training.batch_size = std::stoi(value());
      else if (flag == "--init-scale")
        o.single.model.init_scale = std::stod(value());
      else if (flag == "--seed")
        o.single.training.seed = static_cast<uint32_t>(std::stoul(value()));
      else if (flag == "--momentum") {
        const std::string v = value();
        o.single.model.batch_norm_momentum = v == "none" ? std::nullopt : std::optional<double>(std::stod(v));
      } else
        usage("unknown argument '" + flag + "'");
    } catch (const std::logic_error&) {  // std::stoi / std::stod on a malformed number
      usage(flag + ": '" + argv[i] + "' is not a number");
    }
  }
  if (o.seeds < 1) usage("--seeds must be at least 1");
  if (o.single.training.batch_size < 2) usage("--batch must be at least 2 (BatchNorm needs two rows)");
  return o;
}

// The runs of one experiment, each over seeds 0 .. seeds-1. Defaults: batch 64, learning rate 0.1, momentum 0.9,
// 20 epochs (about 450 steps), where every configuration that converges has converged (the curves flatten).
std::vector<Run> experiment_runs(const std::string& name, int seeds, std::optional<int> epochs) {
  std::vector<Run> runs;
  auto add = [&](ModelConfig model, TrainConfig training) {
    training.epochs = epochs.value_or(training.epochs);
    for (int seed = 0; seed < seeds; seed++) {
      training.seed = static_cast<uint32_t>(seed);
      runs.push_back({name, model, training});
    }
  };
  const TrainConfig base{};
  if (name == "lr") {
    for (Norm norm : {Norm::none, Norm::batch})
      for (double lr : {0.01, 0.03, 0.1, 0.3, 1.0, 2.0}) {
        TrainConfig t = base;
        t.learning_rate = lr;
        add({.norm = norm}, t);
      }
  } else if (name == "init") {
    for (Norm norm : {Norm::none, Norm::batch})
      for (double scale : {0.01, 0.1, 1.0, 10.0}) add({.norm = norm, .init_scale = scale}, base);
  } else if (name == "placement") {
    for (Placement placement : {Placement::before_relu, Placement::after_relu})
      for (double lr : {0.1, 1.0}) {
        TrainConfig t = base;
        t.learning_rate = lr;
        add({.norm = Norm::batch, .placement = placement}, t);
      }
  } else if (name == "batch") {
    // The learning rate scales with the batch (0.1 at 64: 0.003125 at 2), so that every batch size takes the
    // same expected step per epoch (the linear scaling rule); 10 epochs: batch 2 takes 7180 steps.
    for (Norm norm : {Norm::none, Norm::batch, Norm::group, Norm::layer, Norm::rms})
      for (int64_t batch : {2, 4, 8, 64}) {
        TrainConfig t = base;
        t.batch_size = batch;
        t.learning_rate = 0.1 * static_cast<double>(batch) / 64.0;
        t.epochs = 10;
        t.evaluate_with_batch_statistics = norm == Norm::batch;
        add({.norm = norm}, t);
      }
  } else if (name == "eval") {
    for (int64_t batch : {2, 8, 64}) {
      TrainConfig t = base;
      t.batch_size = batch;
      t.learning_rate = 0.1 * static_cast<double>(batch) / 64.0;
      t.epochs = 10;
      t.evaluate_with_batch_statistics = true;
      add({.norm = Norm::batch}, t);
    }
  } else if (name == "momentum") {
    for (std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()})
      for (int64_t batch : {8, 64}) {
        TrainConfig t = base;
        t.batch_size = batch;
        t.learning_rate = 0.1 * static_cast<double>(batch) / 64.0;
        t.epochs = 10;
        add({.norm = Norm::batch, .batch_norm_momentum = momentum}, t);
      }
  }
  return runs;
}

std::string momentum_string(const ModelConfig& m) {
  if (m.norm != Norm::batch) return "";
  if (!m.batch_norm_momentum) return "none";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", *m.batch_norm_momentum);
  return buffer;
}

void write_rows(std::ostream& csv, const Run& run, const RunResult& result) {
  for (const EpochRecord& e : result.epochs) {
    char line[512];
    std::snprintf(line, sizeof line, "%s,%s,%s,%g,%g,%lld,%s,%u,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%d\n",
                  run.experiment.c_str(), to_string(run.model.norm), to_string(run.model.placement),
                  run.training.learning_rate, run.model.init_scale, static_cast<long long>(run.training.batch_size),
                  momentum_string(run.model).c_str(), run.training.seed, e.epoch, e.train_loss, e.train_eval_loss,
                  e.train_accuracy, e.test_loss, e.test_accuracy, e.test_accuracy_batch_statistics,
                  result.diverged ? 1 : 0);
    csv << line;
  }
}

constexpr const char* kCsvHeader =
    "experiment,norm,placement,learning_rate,init_scale,batch_size,bn_momentum,seed,epoch,train_loss,"
    "train_eval_loss,train_accuracy,test_loss,test_accuracy,test_accuracy_batch_statistics,diverged\n";

int run_single(const Split& data, Run run, std::optional<int> epochs) {
  run.training.epochs = epochs.value_or(run.training.epochs);
  std::printf("norm=%s placement=%s lr=%g batch=%lld init_scale=%g momentum=%s seed=%u\n", to_string(run.model.norm),
              to_string(run.model.placement), run.training.learning_rate,
              static_cast<long long>(run.training.batch_size), run.model.init_scale, momentum_string(run.model).c_str(),
              run.training.seed);
  run.training.evaluate_with_batch_statistics = run.model.norm == Norm::batch;
  const RunResult result = train(data, run.model, run.training);
  std::printf("%6s %11s %10s %10s %10s %14s\n", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
              "test_acc_batch");
  for (const EpochRecord& e : result.epochs)
    std::printf("%6d %11.4f %10.4f %10.4f %10.4f %14.4f\n", e.epoch, e.train_loss, e.train_accuracy, e.test_loss,
                e.test_accuracy, e.test_accuracy_batch_statistics);
  if (result.diverged) std::printf("diverged: the training loss became non-finite\n");
  return 0;
}

int run(int argc, char** argv) {
  const Options options = parse(argc, argv);
  const Dataset all = load_digits(options.data);
  // 80 / 20, the same split for every run (seed 0): the seeds vary the weights and the batches, not the data.
  const Split data = split_dataset(all, 0.2, 0);
  if (options.experiments.empty()) return run_single(data, options.single, options.epochs);

  std::ofstream csv_file;
  if (!options.csv.empty()) {
    csv_file.open(options.csv);
    if (!csv_file) throw std::runtime_error("cannot write --csv '" + options.csv + "'");
    csv_file << kCsvHeader;
  }
  std::printf("digits: %lld training rows, %lld test rows; %d seeds per configuration\n",
              static_cast<long long>(data.train.size()), static_cast<long long>(data.test.size()), options.seeds);
  for (const std::string& experiment : options.experiments) {
    const std::vector<Run> runs = experiment_runs(experiment, options.seeds, options.epochs);
    const auto start = std::chrono::steady_clock::now();
    for (size_t i = 0; i < runs.size(); i++) {
      const Run& r = runs[i];
      const RunResult result = train(data, r.model, r.training);
      if (csv_file.is_open()) write_rows(csv_file, r, result);
      const EpochRecord& last = result.epochs.back();
      std::printf(
          "[%s %3zu/%zu] norm=%-5s %-11s lr=%-8g batch=%-3lld init=%-5g momentum=%-4s seed=%u: "
          "test acc %.3f%s\n",
          experiment.c_str(), i + 1, runs.size(), to_string(r.model.norm), to_string(r.model.placement),
          r.training.learning_rate, static_cast<long long>(r.training.batch_size), r.model.init_scale,
          momentum_string(r.model).c_str(), r.training.seed, last.test_accuracy, result.diverged ? " (diverged)" : "");
      std::fflush(stdout);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("[%s] %zu runs in %.1f s\n", experiment.c_str(), runs.size(), seconds);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_mlp: %s\n", e.what());
    return 1;
  }
}
