// Window readout on X-NeMo Sample Animation: how many context windows each step runs and the total UNet passes,
// from context_length, context_overlap, closed_loop, steps, seed, offset_mode and the frame count when it is known.
// Display only. The counts come from the pack's route /xnemo/windows, i.e. from the sampler's own window planner
// (xnemo_core/pure/windows.py): open-loop windows per step depend on each step's seeded offset.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_ID = "XNeMoSampleAnimation";
const FRAME_WIDGETS = ["batch_size", "length", "frames", "frame_count"];

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

// Frame count: from the last run (the backend may report ui.xnemo_frames), else from a frame-count widget on the
// node feeding `latent`.
function knownFrames(node) {
  const input = node.inputs?.find((i) => i.name === "latent");
  const link = input?.link != null ? node.graph?.links?.[input.link] ?? node.graph?.getLink?.(input.link) : null;
  const origin = link ? node.graph?.getNodeById?.(link.origin_id) : null;
  for (const name of FRAME_WIDGETS) {
    const value = origin ? widgetValue(origin, name) : undefined;
    if (Number.isInteger(value) && value > 0) return value;
  }
  return node.xnemoFrames ?? null;
}

// Last answer of the route per node, keyed by the query it answered; a new query is asked for at most once.
function windowCounts(node, query) {
  const cache = (node.xnemoWindows ??= { query: null, result: null, pending: null });
  if (cache.query === query || cache.pending === query) return cache.query === query ? cache.result : null;
  cache.pending = query;
  api.fetchApi(`/xnemo/windows?${query}`)
    .then((r) => r.json())
    .then((result) => {
      if (cache.pending !== query) return;
      Object.assign(cache, { query, result, pending: null });
      node.setDirtyCanvas?.(true, false);
    })
    .catch(() => { if (cache.pending === query) cache.pending = null; });
  return null;
}

export function readout(node) {
  const length = widgetValue(node, "context_length");
  const overlap = widgetValue(node, "context_overlap");
  const steps = widgetValue(node, "steps");
  const closed = widgetValue(node, "closed_loop") !== false;
  if (!(length > 0) || !(overlap >= 0) || !(steps > 0)) return ["windows: set context_length, context_overlap, steps"];
  if (overlap >= length) return [`overlap ${overlap} must be below context_length ${length}`];
  const frames = knownFrames(node);
  if (frames == null) {
    return [
      `frames unknown: ${length} or fewer -> 1 window/step (${steps} UNet passes)`,
      `more -> windows of ${length} frames sharing ${overlap}`,
    ];
  }
  const params = new URLSearchParams({ frames, length, overlap, steps, closed_loop: String(closed),
    seed: String(widgetValue(node, "seed") ?? 0), offset_mode: widgetValue(node, "offset_mode") ?? "seeded" });
  const counts = windowCounts(node, params.toString());
  if (!counts || counts.error) return [`${frames} frames: ${counts?.error ?? "counting windows..."}`];
  const { min_per_step: lo, max_per_step: hi, total } = counts;
  const per = lo === hi ? `${lo}` : `${lo}-${hi}`;
  return [
    `${frames} frames: ${per} window${hi === 1 ? "" : "s"}/step (${closed ? "closed" : "open"} loop)`,
    `${steps} steps = ${total} UNet passes`,
  ];
}

app.registerExtension({
  name: "XNeMo.WindowReadout",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const node = this;
      this.addCustomWidget({
        name: "window_readout",
        type: "xnemo_window_readout",
        value: "",
        serialize: false,
        options: { serialize: false },
        draw(ctx, _node, width, y) {
          const lines = readout(node);
          ctx.save();
          ctx.fillStyle = globalThis.LiteGraph?.WIDGET_SECONDARY_TEXT_COLOR ?? "#999";
          ctx.font = "11px sans-serif";
          ctx.textAlign = "left";
          lines.forEach((line, i) => ctx.fillText(line, 15, y + 13 + i * 15, width - 30));
          ctx.restore();
        },
        computeSize(width) {
          return [width, 36];
        },
      });
      const size = this.computeSize?.();
      if (size) this.setSize([Math.max(this.size[0], size[0]), Math.max(this.size[1], size[1])]);
      return result;
    };

    // If the sampler reports its frame count in its UI output, remember it for the readout.
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const frames = Number(message?.xnemo_frames?.[0]);
      if (Number.isInteger(frames) && frames > 0) {
        this.xnemoFrames = frames;
        this.setDirtyCanvas?.(true, false);
      }
      return result;
    };
  },
});
