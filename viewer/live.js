// The live page of `python -m sdetalk_jax.stream --serve PORT`: the run's mesh from live/mesh.json,
// then every frame as it is made, from the server-sent events of live/events: the unposed face
// (`expression`, flattened) posed by the head's rotation (for row vectors) and translation (Eq. 4).
// window.live exposes what a headless check reads: ready, frames, lastFrame, ended, errors.
import * as THREE from "three";
import { errorReporter, frameSphere, makeScene } from "./scene.js";

const errors = [];
const live = { ready: false, frames: 0, lastFrame: -1, ended: false, errors };
window.live = live;
const report = errorReporter(errors);
const canvas = document.getElementById("view");
const { renderer, scene, camera, resize } = makeScene(canvas);

function show(mesh, frame) {
  mesh.geometry.attributes.position.array.set(frame.expression);
  mesh.geometry.attributes.position.needsUpdate = true;
  mesh.geometry.computeVertexNormals();
  const r = frame.rotation, t = frame.translation;
  // posed = v R + T for row vectors v: the column-vector matrix is R transposed.
  mesh.matrix.set(r[0][0], r[1][0], r[2][0], t[0], r[0][1], r[1][1], r[2][1], t[1],
                  r[0][2], r[1][2], r[2][2], t[2], 0, 0, 0, 1);
  live.frames += 1;
  live.lastFrame = frame.frame;
  const [top, share] = Object.entries(frame.emotion).sort((a, b) => b[1] - a[1])[0];
  document.getElementById("status").textContent = `frame ${frame.frame} (${(frame.frame / live.fps).toFixed(2)} s)`;
  document.getElementById("emotion").textContent = `${top} ${(100 * share).toFixed(0)} %`;
  renderer.render(scene, camera);
}

async function start() {
  const response = await fetch("live/mesh.json");
  if (!response.ok) throw new Error(`live/mesh.json: ${response.status}`);
  const mesh = await response.json();
  live.fps = mesh.fps;
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(new Float32Array(mesh.template), 3));
  geometry.setAttribute("color", new THREE.BufferAttribute(new Float32Array(mesh.colors), 3));
  geometry.setIndex(mesh.faces);
  geometry.computeVertexNormals();
  const face = new THREE.Mesh(geometry, new THREE.MeshStandardMaterial({ vertexColors: true, roughness: 0.7 }));
  face.matrixAutoUpdate = false;
  scene.add(face);
  resize();
  geometry.computeBoundingSphere();
  frameSphere(camera, geometry.boundingSphere);
  window.addEventListener("resize", () => { resize(); renderer.render(scene, camera); });
  renderer.render(scene, camera);
  const events = new EventSource("live/events");
  events.onmessage = (event) => show(face, JSON.parse(event.data));
  events.addEventListener("end", () => {
    live.ended = true;
    events.close();
    document.getElementById("status").textContent += ": the stream has ended";
  });
  events.onerror = () => { if (!live.ended) document.getElementById("status").textContent = "waiting for the stream"; };
  live.ready = true;
}

start().catch(report);
