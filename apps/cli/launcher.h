#pragma once
// `connex train --nproc N`: runs the same command as N local worker
// processes, like torchrun --nproc-per-node N. Each worker gets RANK,
// WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in its environment, `--nproc`
// removed from its arguments, and CONNEX_LOCAL_RENDEZVOUS naming a directory
// only this user can enter (0700), where the workers meet through a c10d
// FileStore: a local run opens no rendezvous port. The launcher removes the
// directory when the workers are done.
#include <optional>
#include <string>

namespace connex::cli {

// Starts the workers and waits for them. When one fails, the others get
// `grace_seconds` to notice and stop by themselves (they report the lost
// rank), then are terminated. SIGINT, SIGTERM and SIGHUP to the launcher are
// passed on to the workers, and a worker dies with its launcher even when
// that is killed outright. Returns 0 when every worker succeeded, 128 +
// signal when the launcher was stopped by one, else the first failure's exit
// code (128 + signal for a killed worker). Each distinct worker error is
// printed once, when the workers are done.
int launch_local_workers(int argc, char** argv, int nproc, int grace_seconds);

// In a worker started by launch_local_workers: the launcher's private
// rendezvous directory; elsewhere nothing.
std::optional<std::string> local_rendezvous_directory();

// Prints a command's error as one line, `connex: [rank R] message`. A worker
// of launch_local_workers hands it to the launcher instead, which prints each
// distinct message once.
void report_error(const std::string& rank_tag, const std::string& message);

// Keeps torch's own log lines (glog: c10d's socket warnings and errors) off
// stderr; connex reports the failures they are about in its own line.
void silence_torch_logging();

}  // namespace connex::cli
