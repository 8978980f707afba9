// A session driven end to end by a Node.js client (@grpc/grpc-js) built only from ArmoniK's
// public protos, loaded from a FileDescriptorSet (tests/e2e/test_node_client.py writes it from
// the descriptors compiled into the `armonik` Python package).
//
//   node session.mjs ENDPOINT DESCRIPTOR_SET [MARKER]
//
// The tasks are orders of the end-to-end test worker (tests/e2e/workers/official.py): a JSON
// payload whose `kind` chooses what it does. MARKER is the file the task without outputs
// writes its id to. Prints one JSON summary on stdout; exits 1 on any failure (the summary
// then says at which step and why).

import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const [endpoint, descriptorSetPath, markerArg] = process.argv.slice(2);
if (!endpoint || !descriptorSetPath) {
  console.error("usage: node session.mjs ENDPOINT DESCRIPTOR_SET [MARKER]");
  process.exit(2);
}
const marker = markerArg ?? join(tmpdir(), `pyarmonik-node-silent-${process.pid}`);

const RPC_SECONDS = 30; // deadline of each call
const WAIT_SECONDS = 90; // longest wait for a status
const TOTAL_SECONDS = 240; // the whole scenario

const summary = { ok: false, endpoint, step: "load protos" };
let step = "load protos";
const started = Date.now();

function finish(code) {
  summary.step = step;
  summary.elapsed_seconds = (Date.now() - started) / 1000;
  process.stdout.write(JSON.stringify(summary) + "\n", () => process.exit(code));
}

const watchdog = setTimeout(() => {
  summary.error = `the scenario took longer than ${TOTAL_SECONDS} s`;
  finish(1);
}, TOTAL_SECONDS * 1000);

// -- the API, as the protos describe it --------------------------------------------------------

const definition = protoLoader.loadFileDescriptorSetFromBuffer(readFileSync(descriptorSetPath), {
  keepCase: true, // field names as in the .proto files
  longs: String,
  enums: String, // statuses by their proto names
  defaults: true,
  oneofs: true, // the name of the set field of a oneof, e.g. `update`
});
const api = grpc.loadPackageDefinition(definition).armonik.api.grpc.v1;
const credentials = grpc.credentials.createInsecure();
const sessions = new api.sessions.Sessions(endpoint, credentials);
const results = new api.results.Results(endpoint, credentials);
const tasks = new api.tasks.Tasks(endpoint, credentials);
const events = new api.events.Events(endpoint, credentials);

const deadline = () => new Date(Date.now() + RPC_SECONDS * 1000);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (error, reply) => {
      if (error) {
        reject(new Error(`${method}: ${grpc.status[error.code]} ${error.details}`));
      } else {
        resolve(reply);
      }
    });
  });
}

function download(sessionId, resultId) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    const call = results.DownloadResultData(
      { session_id: sessionId, result_id: resultId },
      { deadline: deadline() },
    );
    call.on("data", (reply) => chunks.push(reply.data_chunk));
    call.on("error", (error) =>
      reject(new Error(`DownloadResultData: ${grpc.status[error.code]} ${error.details}`)),
    );
    call.on("end", () => resolve(Buffer.concat(chunks)));
  });
}

/** The session's events, from GetEvents: `first` resolves at the first one, `until(check)` at
 * the first event `check` accepts; every event is counted by kind. */
function subscribe(sessionId) {
  const kinds = {};
  const waiters = [];
  let failure = null;
  let resolveFirst;
  let rejectFirst;
  const first = new Promise((resolve, reject) => {
    resolveFirst = resolve;
    rejectFirst = reject;
  });
  // No deadline: the stream never ends by itself; it is cancelled once the scenario saw enough.
  const call = events.GetEvents({
    session_id: sessionId,
    tasks_filters: { or: [] },
    results_filters: { or: [] },
    returned_events: [], // every kind
  });
  call.on("data", (event) => {
    kinds[event.update] = (kinds[event.update] ?? 0) + 1;
    resolveFirst(event);
    for (const waiter of [...waiters]) {
      if (waiter.check(event)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(event);
      }
    }
  });
  call.on("error", (error) => {
    if (error.code === grpc.status.CANCELLED) return;
    failure = new Error(`GetEvents: ${grpc.status[error.code]} ${error.details}`);
    rejectFirst(failure);
    for (const waiter of waiters.splice(0)) waiter.reject(failure);
  });
  const until = (check, what) =>
    new Promise((resolve, reject) => {
      if (failure) return reject(failure);
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        reject(new Error(`no event ${what} within ${WAIT_SECONDS} s`));
      }, WAIT_SECONDS * 1000);
      const waiter = {
        check,
        resolve: (event) => (clearTimeout(timer), resolve(event)),
        reject: (error) => (clearTimeout(timer), reject(error)),
      };
      waiters.push(waiter);
    });
  return { kinds, first, until, cancel: () => call.cancel() };
}

function sessionFilter(sessionId) {
  return {
    or: [
      {
        and: [
          {
            field: { task_summary_field: { field: "TASK_SUMMARY_ENUM_FIELD_SESSION_ID" } },
            filter_string: { value: sessionId, operator: "FILTER_STRING_OPERATOR_EQUAL" },
          },
        ],
      },
    ],
  };
}

async function taskStatuses(sessionId) {
  const reply = await unary(tasks, "ListTasks", {
    page: 0,
    page_size: 100,
    filters: sessionFilter(sessionId),
    sort: {
      field: { task_summary_field: { field: "TASK_SUMMARY_ENUM_FIELD_CREATED_AT" } },
      direction: "SORT_DIRECTION_ASC",
    },
  });
  return Object.fromEntries(reply.tasks.map((task) => [task.id, task.status]));
}

/** ListTasks until every task of `ids` has one of `wanted` statuses; their statuses. */
async function waitForStatuses(sessionId, ids, wanted) {
  const limit = Date.now() + WAIT_SECONDS * 1000;
  for (;;) {
    const statuses = await taskStatuses(sessionId);
    const mine = Object.fromEntries(ids.map((id) => [id, statuses[id]]));
    if (ids.every((id) => wanted.includes(mine[id]))) return mine;
    if (Date.now() > limit) {
      throw new Error(`tasks not ${wanted.join("|")} in ${WAIT_SECONDS} s: ${JSON.stringify(mine)}`);
    }
    await sleep(200);
  }
}

const order = (value) => Buffer.from(JSON.stringify(value));

// -- the scenario ------------------------------------------------------------------------------

async function main() {
  step = "CreateSession";
  const { session_id: sessionId } = await unary(sessions, "CreateSession", {
    default_task_option: {
      max_duration: { seconds: 300, nanos: 0 },
      max_retries: 1,
      priority: 1,
      partition_id: "default",
      // protobufjs reads a map field of a descriptor set as its entries: [{ key, value }].
      options: [],
    },
    partition_ids: ["default"],
  });
  summary.session_id = sessionId;

  step = "CreateResultsMetaData";
  const text = "hello from node";
  const metadata = await unary(results, "CreateResultsMetaData", {
    session_id: sessionId,
    results: [{ name: "output" }, { name: "never-produced" }],
  });
  const [output, neverProduced] = metadata.results.map((r) => r.result_id);

  step = "CreateResults";
  const created = await unary(results, "CreateResults", {
    session_id: sessionId,
    results: [
      { name: "upper", data: order({ kind: "upper", text }) },
      { name: "silent", data: order({ kind: "silent", marker }) },
      { name: "sleep", data: order({ kind: "sleep", seconds: 120 }) },
      { name: "after", data: order({ kind: "upper", text: "never run" }) },
    ],
  });
  const payload = Object.fromEntries(created.results.map((r) => [r.name, r.result_id]));
  summary.created_result_statuses = Object.fromEntries(
    [...metadata.results, ...created.results].map((r) => [r.name, r.status]),
  );

  // The subscription is live once its snapshot (the results above) arrives: what follows
  // comes as live changes.
  step = "GetEvents";
  const feed = subscribe(sessionId);
  await Promise.race([
    feed.first,
    sleep(WAIT_SECONDS * 1000).then(() => {
      throw new Error("GetEvents sent no snapshot");
    }),
  ]);
  const outputCompleted = feed.until(
    (event) =>
      (event.update === "result_status_update" &&
        event.result_status_update.result_id === output &&
        event.result_status_update.status === "RESULT_STATUS_COMPLETED") ||
      (event.update === "new_result" &&
        event.new_result.result_id === output &&
        event.new_result.status === "RESULT_STATUS_COMPLETED"),
    "completing the output",
  );

  step = "SubmitTasks";
  const submitted = await unary(tasks, "SubmitTasks", {
    session_id: sessionId,
    task_creations: [
      { payload_id: payload.upper, expected_output_keys: [output], data_dependencies: [] },
      // No expected output: ArmoniK accepts it, and the C#, C++, Java and Rust SDKs send it.
      { payload_id: payload.silent, expected_output_keys: [], data_dependencies: [] },
    ],
  });
  const [withOutput, withoutOutput] = submitted.task_infos;
  summary.submitted = submitted.task_infos.map((info) => ({
    task_id: info.task_id,
    expected_output_ids: info.expected_output_ids,
    payload_id: info.payload_id,
  }));

  step = "GetEvents until the output is COMPLETED";
  const completion = await outputCompleted;
  summary.output_completed_by = completion.update;

  step = "DownloadResultData";
  const data = await download(sessionId, output);
  summary.output_id = output;
  summary.downloaded_base64 = data.toString("base64");
  summary.downloaded_text = data.toString("utf8");

  step = "ListTasks until both tasks are COMPLETED";
  summary.completed = await waitForStatuses(
    sessionId,
    [withOutput.task_id, withoutOutput.task_id],
    ["TASK_STATUS_COMPLETED", "TASK_STATUS_ERROR", "TASK_STATUS_CANCELLED"],
  );
  summary.task_with_output = withOutput.task_id;
  summary.task_without_output = withoutOutput.task_id;
  summary.marker = marker;

  // A second batch, cancelled: a running task, and a task waiting on a result nobody produces.
  step = "SubmitTasks (the batch to cancel)";
  const outputs = await unary(results, "CreateResultsMetaData", {
    session_id: sessionId,
    results: [{ name: "sleep-output" }, { name: "after-output" }],
  });
  const [sleepOutput, afterOutput] = outputs.results.map((r) => r.result_id);
  const second = await unary(tasks, "SubmitTasks", {
    session_id: sessionId,
    task_creations: [
      { payload_id: payload.sleep, expected_output_keys: [sleepOutput], data_dependencies: [] },
      {
        payload_id: payload.after,
        expected_output_keys: [afterOutput],
        data_dependencies: [neverProduced],
      },
    ],
  });
  const [sleeping, waiting] = second.task_infos.map((info) => info.task_id);

  step = "ListTasks until the batch runs";
  summary.before_cancel = {
    ...(await waitForStatuses(sessionId, [sleeping], ["TASK_STATUS_PROCESSING"])),
    ...(await waitForStatuses(sessionId, [waiting], ["TASK_STATUS_PENDING", "TASK_STATUS_CREATING"])),
  };

  step = "CancelTasks";
  const cancelled = await unary(tasks, "CancelTasks", { task_ids: [sleeping, waiting] });
  summary.cancel_reply = Object.fromEntries(cancelled.tasks.map((task) => [task.id, task.status]));

  step = "ListTasks until the batch is CANCELLED";
  summary.cancelled = await waitForStatuses(
    sessionId,
    [sleeping, waiting],
    ["TASK_STATUS_CANCELLED", "TASK_STATUS_COMPLETED", "TASK_STATUS_ERROR"],
  );
  summary.cancelled_task_ids = [sleeping, waiting];

  step = "GetResult of the cancelled tasks' outputs";
  summary.cancelled_outputs = {};
  for (const id of [sleepOutput, afterOutput]) {
    summary.cancelled_outputs[id] = (await unary(results, "GetResult", { result_id: id })).result.status;
  }

  step = "CancelSession";
  summary.session_status = (
    await unary(sessions, "CancelSession", { session_id: sessionId })
  ).session.status;

  feed.cancel();
  summary.event_kinds = feed.kinds;
  summary.ok = true;
  step = "done";
}

main().then(
  () => {
    clearTimeout(watchdog);
    finish(0);
  },
  (error) => {
    clearTimeout(watchdog);
    summary.error = error instanceof Error ? error.message : String(error);
    finish(1);
  },
);
