@0xca4016563466b371;
# The wire protocol between build-client, build-scheduler and build-worker.
#
# Every connection is dialled by a client or a worker towards the scheduler;
# its bootstrap capability is a Restorer, which turns the secret id of a
# sturdy reference (a .cap file) into a live capability.

struct PushTarget {
  target @0 :Text;      # REPO:TAG to push the image to
  user @1 :Text;
  password @2 :Text;    # never logged, never shown
}

struct JobDescription {
  dockerfile :union {
    contents @0 :Text;  # the Dockerfile itself
    path @1 :Text;      # a path inside the repository
  }
  repository @2 :Text;  # git URL; empty: the context is just the Dockerfile
  commits @3 :List(Text);  # the first is checked out, the rest merged in order
  buildArgs @4 :List(Text);  # "KEY=VALUE" strings
  target @5 :Text;
  squash @6 :Bool;
  noCache @7 :Bool;
  cacheHint @8 :Text;
  push @9 :PushTarget;  # null: keep the image locally
  estimatedSeconds @10 :Float64;  # 0: unknown
}

enum JobState {
  queued @0;
  running @1;
  succeeded @2;
  failed @3;
  cancelled @4;
}

struct JobStatus {
  id @0 :Text;
  pool @1 :Text;
  state @2 :JobState;
  worker @3 :Text;          # empty while queued
  queuePosition @4 :UInt32; # 0-based, meaningful while queued
  attempt @5 :UInt32;       # 1 for the first attempt
}

struct Outcome {
  union {
    success @0 :Text;     # the image id, or the pushed RepoId
    failure @1 :Text;     # why the build failed
    cancelled @2 :Void;
  }
}

interface Restorer {
  restore @0 (id :Data, interfaceId :UInt64) -> (cap :Capability);
  # The capability behind `id`, which must be of interface `interfaceId`.
}

interface Submission {
  submit @0 (pool :Text, description :JobDescription, urgent :Bool)
      -> (ticket :Ticket);
  ticket @1 (id :Text) -> (ticket :Ticket);
  # Reattach to a job submitted earlier by the same client.
}

interface Ticket {
  job @0 () -> (job :Job, worker :Text);
  # Resolves once a worker has started the job.
  cancel @1 () -> ();
  status @2 () -> (status :JobStatus);
  result @3 () -> (outcome :Outcome);
  # Waits until the job ends, for a client that wants no log: the same as
  # `job` then `Job.result`, without the Job capability.
}

interface Job {
  log @0 (start :Int64) -> (data :Data, next :Int64, ended :Bool,
                            outcome :Outcome);
  # At most one chunk of the log from byte `start`, waiting while there is
  # nothing new and the job still runs. An empty chunk means the log ended;
  # so does `ended`, set when this chunk reaches the end of a finished log,
  # which saves the reader one call. A negative start counts from the end.
  # With `ended` comes `outcome`, how the job ended, which saves the reader
  # the `result` call (a peer too old to send it leaves it null).
  result @1 () -> (outcome :Outcome);
  # Waits until the job ends.
  cancel @2 () -> ();
}

enum MetricsSource {
  agent @0;   # the worker's own metrics
  host @1;    # the worker host's node exporter
}

interface Worker {
  metrics @0 (source :MetricsSource) -> (contentType :Text, data :Text);
  ping @1 () -> ();
}

interface Registration {
  register @0 (name :Text, worker :Worker, capacity :UInt32)
      -> (queue :Queue);
}

interface Queue {
  pop @0 (job :Job) -> (id :Text, description :JobDescription);
  # Waits for work; `job` is the worker's handle on the build it will run.
  setActive @1 (active :Bool) -> ();
  cachePruned @2 () -> ();
  # The worker dropped its build cache: its cache hints no longer hold.
}

struct WorkerInfo {
  name @0 :Text;
  capacity @1 :UInt32;
  running @2 :UInt32;
  active @3 :Bool;
  connected @4 :Bool;
}

struct ClientInfo {
  name @0 :Text;
}

interface DrainProgress {
  running @0 (jobs :UInt32) -> ();
}

interface PoolAdmin {
  show @0 () -> (state :Text);
  workers @1 () -> (workers :List(WorkerInfo));
  setActive @2 (worker :Text, active :Bool) -> ();
  drain @3 (worker :Text, progress :DrainProgress) -> ();
  forget @4 (worker :Text) -> ();
  setRate @5 (client :Text, rate :Float64) -> ();
}

interface Admin {
  pools @0 () -> (names :List(Text));
  pool @1 (name :Text) -> (pool :PoolAdmin);
  addClient @2 (name :Text) -> (capUri :Text);
  removeClient @3 (name :Text) -> ();
  listClients @4 () -> (clients :List(ClientInfo));
  job @5 (id :Text) -> (ticket :Ticket);
}
