#pragma once
// `connex train --nproc N`: runs the same command as N local worker
// processes, like torchrun --nproc-per-node N. Each worker gets RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free
// MASTER_PORT in its environment, and `--nproc` removed from its arguments.
namespace connex::cli {

// Starts the workers and waits for them. When one fails, the others get
// `grace_seconds` to notice and stop by themselves (they report the lost
// rank), then are terminated. Returns 0 when every worker succeeded, else the
// first failure's exit code (128 + signal for a killed worker).
int launch_local_workers(int argc, char** argv, int nproc, int grace_seconds);

}  // namespace connex::cli
