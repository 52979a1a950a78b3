// Window readout on X-NeMo Sample Animation: how many context windows each step runs and the total UNet passes,
// from context_length, context_overlap, closed_loop, steps and the frame count when it is known. Display only.
import { app } from "../../../scripts/app.js";

const NODE_ID = "XNeMoSampleAnimation";
const FRAME_WIDGETS = ["batch_size", "length", "frames", "frame_count"];

// Mirrors the sampler's uniform schedule: window starts j in range(0, N, L - O) when closed (one window if
// N <= L), range(0, N - O, L - O) when open.
export function windowsPerStep(frames, length, overlap, closedLoop) {
  const stride = length - overlap;
  if (stride <= 0) return null;
  if (closedLoop) return frames > length ? Math.ceil(frames / stride) : 1;
  return Math.max(1, Math.ceil((frames - overlap) / stride));
}

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

function readout(node) {
  const length = widgetValue(node, "context_length");
  const overlap = widgetValue(node, "context_overlap");
  const steps = widgetValue(node, "steps");
  const closed = widgetValue(node, "closed_loop") !== false;
  if (!(length > 0) || !(overlap >= 0) || !(steps > 0)) return ["windows: set context_length, context_overlap, steps"];
  if (overlap >= length) return [`overlap ${overlap} must be below context_length ${length}`];
  const stride = length - overlap;
  const frames = knownFrames(node);
  if (frames == null) {
    return [
      `frames unknown: ${length} or fewer -> 1 window/step (${steps} UNet passes)`,
      `more -> about N/${stride} windows/step, x${steps} steps`,
    ];
  }
  const windows = windowsPerStep(frames, length, overlap, closed);
  return [
    `${frames} frames: ${windows} window${windows === 1 ? "" : "s"}/step (${closed ? "closed" : "open"} loop)`,
    `${windows} x ${steps} steps = ${windows * steps} UNet passes`,
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
