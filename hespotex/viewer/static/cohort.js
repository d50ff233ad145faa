// The cohort page: every slide of the sheet, filtered by the search box and sorted by a
// click on a column's header.
"use strict";

const table = document.querySelector("#slides tbody");
const headers = [...document.querySelectorAll("#slides th")];
let rows = [];
let sortKey = "slide_id";
let ascending = true;

function shareText(value) {
  return value === null || value === undefined ? "" : `${(100 * value).toFixed(1)}%`;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function rowElement(row) {
  const tr = document.createElement("tr");
  tr.dataset.slide = row.slide_id;
  const thumb = document.createElement("td");
  if (row.has_thumbnail) {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = row.slide_id;
    img.src = `/api/slides/${encodeURIComponent(row.slide_id)}/thumbnail.png`;
    thumb.appendChild(img);
  }
  tr.appendChild(thumb);
  const name = document.createElement("td");
  if (row.status === "done") {
    const link = document.createElement("a");
    link.href = `/slide/${encodeURIComponent(row.slide_id)}`;
    link.textContent = row.slide_id;
    name.appendChild(link);
  } else {
    name.textContent = row.slide_id;
  }
  tr.appendChild(name);
  tr.appendChild(cell(row.status, `status-${String(row.status).replace(/ /g, "-")}`));
  tr.appendChild(cell(row.spots));
  const area = row.tissue_area_mm2;
  tr.appendChild(cell(area === null || area === undefined ? "" : Number(area).toFixed(1)));
  tr.appendChild(cell(row.qc_verdict));
  tr.appendChild(cell(row.spots_flagged));
  tr.appendChild(cell(row.spots_dropped));
  tr.appendChild(cell(shareText(row.ink_share)));
  tr.appendChild(cell(shareText(row.fold_share)));
  tr.appendChild(cell(shareText(row.blur_share)));
  const reason = row.failed_stage ? `${row.failed_stage}: ${row.reason || ""}` : "";
  tr.appendChild(cell(reason, "reason"));
  return tr;
}

function render() {
  const query = document.getElementById("search").value.toLowerCase();
  const numeric = headers.find((th) => th.dataset.key === sortKey)?.dataset.numeric;
  const shown = rows
    .filter((row) =>
      [row.slide_id, row.status, row.reason, row.failed_stage, row.qc_verdict]
        .some((text) => String(text ?? "").toLowerCase().includes(query)))
    .sort((a, b) => {
      const x = a[sortKey], y = b[sortKey];
      const order = numeric ? (Number(x ?? -Infinity) - Number(y ?? -Infinity))
                            : String(x ?? "").localeCompare(String(y ?? ""));
      return ascending ? order : -order;
    });
  table.replaceChildren(...shown.map(rowElement));
  headers.forEach((th) => {
    th.classList.toggle("sorted-asc", th.dataset.key === sortKey && ascending);
    th.classList.toggle("sorted-desc", th.dataset.key === sortKey && !ascending);
  });
  const done = rows.filter((row) => row.status === "done").length;
  const failed = rows.filter((row) => row.status === "failed").length;
  document.getElementById("counts").textContent =
    `${rows.length} slides: ${done} done, ${failed} failed, ${rows.length - done - failed} not run`;
}

headers.forEach((th) => th.addEventListener("click", () => {
  ascending = th.dataset.key === sortKey ? !ascending : true;
  sortKey = th.dataset.key;
  render();
}));
document.getElementById("search").addEventListener("input", render);

fetch("/api/cohort")
  .then(async (response) => {
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    rows = body;
    render();
    document.body.dataset.ready = "1";
  })
  .catch((error) => {
    document.getElementById("counts").textContent = `cannot list the slides: ${error.message}`;
  });
