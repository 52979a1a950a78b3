// Easing-curve preview on X-NeMo Interpolate Motion: a small drawing of the selected easing, redrawn when the
// `easing` combo changes. Display only: the widget is kept out of widgets_values and out of the API prompt.
import { app } from "../../../scripts/app.js";

const NODE_ID = "XNeMoInterpolateMotion";
const HEIGHT = 84;

// Same curves as xnemo_core/motion_ops.py (EASING_FUNCTIONS); every one maps 0 -> 0 and 1 -> 1.
export const EASINGS = {
  linear: (t) => t,
  ease_in: (t) => t * t,
  ease_out: (t) => 1 - (1 - t) * (1 - t),
  ease_in_out: (t) => (t < 0.5 ? 0.5 * (2 * t) ** 3 : 1 - 0.5 * (2 - 2 * t) ** 3),
  smoothstep: (t) => t * t * (3 - 2 * t),
  smootherstep: (t) => t ** 3 * (t * (6 * t - 15) + 10),
  sine_in_out: (t) => (1 - Math.cos(Math.PI * t)) / 2,
};

function color(name, fallback) {
  return globalThis.LiteGraph?.[name] ?? fallback;
}

function drawCurve(ctx, node, width, y, name) {
  const curve = EASINGS[name];
  const margin = 15;
  const size = HEIGHT - 12;
  const x0 = margin;
  const y0 = y + 4;
  ctx.save();
  ctx.fillStyle = color("WIDGET_BGCOLOR", "#222");
  ctx.strokeStyle = color("WIDGET_OUTLINE_COLOR", "#666");
  ctx.beginPath();
  ctx.rect(x0, y0, size, size);
  ctx.fill();
  ctx.stroke();
  // diagonal = linear, for reference
  ctx.setLineDash([3, 3]);
  ctx.beginPath();
  ctx.moveTo(x0, y0 + size);
  ctx.lineTo(x0 + size, y0);
  ctx.stroke();
  ctx.setLineDash([]);
  if (curve) {
    ctx.strokeStyle = "#6cf";
    ctx.lineWidth = 2;
    ctx.beginPath();
    for (let i = 0; i <= 48; i++) {
      const t = i / 48;
      const px = x0 + t * size;
      const py = y0 + size - curve(t) * size;
      if (i === 0) ctx.moveTo(px, py);
      else ctx.lineTo(px, py);
    }
    ctx.stroke();
  }
  ctx.fillStyle = color("WIDGET_SECONDARY_TEXT_COLOR", "#999");
  ctx.font = "11px sans-serif";
  ctx.textAlign = "left";
  const textX = x0 + size + 10;
  if (textX < width - margin) {
    ctx.fillText(curve ? name : `${name} (no preview)`, textX, y0 + 14);
    ctx.fillText("x: time, y: blend", textX, y0 + 30);
  }
  ctx.restore();
}

app.registerExtension({
  name: "XNeMo.EasingPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const easing = this.widgets?.find((w) => w.name === "easing");
      if (!easing) return result;
      const node = this;
      const preview = {
        name: "easing_preview",
        type: "xnemo_easing_preview",
        value: "",
        serialize: false,
        options: { serialize: false },
        draw(ctx, _node, width, y) {
          drawCurve(ctx, node, width, y, easing.value);
        },
        computeSize(width) {
          return [width, HEIGHT];
        },
      };
      this.addCustomWidget(preview);
      // redraw at once when the combo changes (the drawing itself always reads the current value)
      const callback = easing.callback;
      easing.callback = function () {
        const r = callback?.apply(this, arguments);
        node.setDirtyCanvas?.(true, true);
        return r;
      };
      const size = this.computeSize?.();
      if (size) this.setSize([Math.max(this.size[0], size[0]), Math.max(this.size[1], size[1])]);
      return result;
    };
  },
});
