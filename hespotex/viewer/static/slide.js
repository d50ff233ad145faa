// A slide's page: the slide zoomable to full resolution (OpenSeadragon, Deep Zoom tiles), its
// spots drawn over it on a canvas coloured by the chosen gene (viridis over the 2nd to 98th
// percentile of its values on the slide), quality control's layers, and a clicked spot's values.
"use strict";

const slideId = decodeURIComponent(location.pathname.split("/").pop());
const api = `/api/slides/${encodeURIComponent(slideId)}`;
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
const DROPPED_COLOUR = "rgba(158, 158, 158, 0.9)";
const FLAGGED_COLOUR = "#ff9800";
const OUTLINE_COLOUR = "#00c853";

// scale: image pixels per level-0 pixel (1 for the slide's own tiles; a remote slide, which
// has none here, is shown as its thumbnail).
const state = { info: null, spots: null, dropped: null, outline: [], drawn: 0, scale: 1 };
const overlay = document.getElementById("overlay");
const controls = {
  gene: document.getElementById("gene"),
  opacity: document.getElementById("opacity"),
  dropped: document.getElementById("show-dropped"),
  flagged: document.getElementById("show-flagged"),
  outline: document.getElementById("show-outline"),
};

function viridis(t) {
  const position = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const low = Math.floor(position), high = Math.min(VIRIDIS.length - 1, low + 1);
  const f = position - low;
  return VIRIDIS[low].map((c, i) => Math.round(c + f * (VIRIDIS[high][i] - c)));
}

function spotColour(index) {
  const [low, high] = state.spots.range;
  const share = high > low ? (state.spots.values[index] - low) / (high - low) : 0;
  const [r, g, b] = viridis(Number.isFinite(share) ? share : 0);
  return `rgb(${r}, ${g}, ${b})`;
}

const viewer = OpenSeadragon({
  id: "viewer",
  prefixUrl: "/static/openseadragon/images/",
  showNavigator: true,
  maxZoomPixelRatio: 2,
  gestureSettingsMouse: { clickToZoom: false },
});
viewer.element.appendChild(overlay);

function imageTransform() {
  const item = viewer.world.getItemAt(0);
  const origin = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
  const unit = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 0));
  return { x: origin.x, y: origin.y, scale: ((unit.x - origin.x) / 1000) * state.scale };
}

function draw() {
  if (!state.spots || viewer.world.getItemCount() === 0) return;
  const ratio = window.devicePixelRatio || 1;
  const width = viewer.element.clientWidth, height = viewer.element.clientHeight;
  if (overlay.width !== width * ratio || overlay.height !== height * ratio) {
    overlay.width = width * ratio;
    overlay.height = height * ratio;
    overlay.style.width = `${width}px`;
    overlay.style.height = `${height}px`;
  }
  const context = overlay.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  const t = imageTransform();
  const radius = Math.max(1, state.info.spot_radius_px * t.scale);
  const toScreen = (x, y) => [t.x + x * t.scale, t.y + y * t.scale];
  const visible = (sx, sy) => sx > -radius && sy > -radius && sx < width + radius && sy < height + radius;
  context.globalAlpha = Number(controls.opacity.value);
  let drawn = 0;
  const { x, y, qc } = state.spots;
  for (let i = 0; i < x.length; i++) {
    const [sx, sy] = toScreen(x[i], y[i]);
    if (!visible(sx, sy)) continue;
    context.fillStyle = spotColour(i);
    context.beginPath();
    context.arc(sx, sy, radius, 0, 2 * Math.PI);
    context.fill();
    drawn++;
  }
  context.globalAlpha = 1;
  if (controls.flagged.checked && qc.qc) {
    context.strokeStyle = FLAGGED_COLOUR;
    context.lineWidth = Math.max(1.5, radius / 5);
    for (let i = 0; i < x.length; i++) {
      if (qc.qc[i] !== "flagged") continue;
      const [sx, sy] = toScreen(x[i], y[i]);
      if (!visible(sx, sy)) continue;
      context.beginPath();
      context.arc(sx, sy, radius, 0, 2 * Math.PI);
      context.stroke();
    }
  }
  if (controls.dropped.checked && state.dropped) {
    context.strokeStyle = DROPPED_COLOUR;
    context.lineWidth = Math.max(1, radius / 6);
    const arm = radius * 0.6;
    for (let i = 0; i < state.dropped.x.length; i++) {
      const [sx, sy] = toScreen(state.dropped.x[i], state.dropped.y[i]);
      if (!visible(sx, sy)) continue;
      context.beginPath();
      context.moveTo(sx - arm, sy - arm); context.lineTo(sx + arm, sy + arm);
      context.moveTo(sx + arm, sy - arm); context.lineTo(sx - arm, sy + arm);
      context.stroke();
    }
  }
  if (controls.outline.checked) {
    context.strokeStyle = OUTLINE_COLOUR;
    context.lineWidth = 1.5;
    for (const polygon of state.outline) {
      context.beginPath();
      polygon.forEach(([px, py], i) => {
        const [sx, sy] = toScreen(px, py);
        if (i === 0) context.moveTo(sx, sy); else context.lineTo(sx, sy);
      });
      context.closePath();
      context.stroke();
    }
  }
  state.drawn = drawn;
  overlay.dataset.spotsDrawn = String(drawn);
}

function drawColourbar() {
  const bar = document.getElementById("colourbar");
  const context = bar.getContext("2d");
  for (let i = 0; i < bar.width; i++) {
    const [r, g, b] = viridis(i / (bar.width - 1));
    context.fillStyle = `rgb(${r}, ${g}, ${b})`;
    context.fillRect(i, 0, 1, bar.height);
  }
  const [low, high] = state.spots.range;
  document.getElementById("low").textContent = low.toFixed(2);
  document.getElementById("high").textContent = high.toFixed(2);
}

async function showGene(gene) {
  state.spots = await fetchJson(`${api}/spots?gene=${encodeURIComponent(gene)}`);
  document.body.dataset.gene = gene;
  drawColourbar();
  draw();
}

function describeSpot(index) {
  const spots = state.spots;
  const lines = [`spot ${spots.spot_id[index]}`,
    `${spots.gene}: ${spots.values[index].toFixed(3)}`,
    `x, y: ${spots.x[index].toFixed(0)}, ${spots.y[index].toFixed(0)} px ` +
    `(${(spots.x[index] * state.info.mpp).toFixed(0)}, ${(spots.y[index] * state.info.mpp).toFixed(0)} µm)`];
  for (const [column, values] of Object.entries(spots.qc)) {
    if (values[index] !== "" && values[index] !== null) lines.push(`${column}: ${values[index]}`);
  }
  return lines.join("\n");
}

viewer.addHandler("canvas-click", (event) => {
  if (!event.quick || !state.spots) return;
  const image = viewer.world.getItemAt(0).viewerElementToImageCoordinates(event.position);
  const point = { x: image.x / state.scale, y: image.y / state.scale };
  let best = -1, bestDistance = state.info.spot_radius_px ** 2;
  for (let i = 0; i < state.spots.x.length; i++) {
    const distance = (state.spots.x[i] - point.x) ** 2 + (state.spots.y[i] - point.y) ** 2;
    if (distance <= bestDistance) { best = i; bestDistance = distance; }
  }
  const info = document.getElementById("spot-info");
  info.textContent = best < 0 ? "no spot here" : describeSpot(best);
  info.dataset.spot = best < 0 ? "" : state.spots.spot_id[best];
});

for (const name of ["animation", "open", "resize", "update-viewport"]) viewer.addHandler(name, draw);
controls.opacity.addEventListener("input", draw);
for (const box of [controls.dropped, controls.flagged, controls.outline]) {
  box.addEventListener("change", draw);
}
controls.gene.addEventListener("change", () => showGene(controls.gene.value));

async function fetchJson(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${url}: HTTP ${response.status}`);
  return body;
}

async function start() {
  state.info = await fetchJson(api);
  if (state.info.zoomable) {
    viewer.open(`/tiles/${encodeURIComponent(slideId)}.dzi`);
  } else {
    state.scale = 1 / state.info.thumbnail_downsample;
    viewer.open({ type: "image", url: `${api}/thumbnail.png` });
  }
  document.getElementById("title").textContent = slideId;
  document.getElementById("summary").textContent =
    `${state.info.spots} spots, ${state.info.genes.length} genes, ${state.info.mpp.toFixed(3)} µm/px`;
  const score = state.info.score;
  const genes = [...state.info.genes].sort((a, b) => (b[score] ?? -2) - (a[score] ?? -2));
  for (const gene of genes) {
    const option = document.createElement("option");
    option.value = gene.name;
    const model = gene.served_model ? `, ${gene.served_model}` : "";
    const value = score && gene[score] !== null ? ` (${gene[score].toFixed(2)}${model})` : "";
    option.textContent = `${gene.name}${value}`;
    controls.gene.appendChild(option);
  }
  controls.gene.value = state.info.default_gene;
  [state.dropped, state.outline] = await Promise.all([
    fetchJson(`${api}/dropped`),
    fetchJson(`${api}/outline`),
  ]);
  await showGene(state.info.default_gene);
  const markReady = () => { draw(); document.body.dataset.ready = "1"; };
  if (viewer.world.getItemCount() > 0) markReady(); else viewer.addOnceHandler("open", markReady);
}

window.hespotex = { state, viewer, draw, spotColour };
start().catch((error) => {
  document.getElementById("summary").textContent = `cannot show this slide: ${error.message}`;
  document.body.dataset.error = error.message;
});
