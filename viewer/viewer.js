// The sdetalk-jax glTF viewer: loads ?model=FILE.glb (and ?audio=FILE.wav, else the audio named in
// the file's extras), plays the animation in step with the audio: every frame the animation time is
// the audio's clock, so the face cannot drift from the speech. ?t=SECONDS opens it at that moment
// (a link or a screenshot of one frame); ?autoplay=1 starts playing at once, muted where the
// browser refuses sound without a click (the play button then unmutes). window.viewer exposes what
// the headless check reads: ready, errors, duration, time, playing, muted, seek(t).
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { errorReporter, frameSphere, makeScene } from "./scene.js";

const errors = [];
const report = errorReporter(errors);
const canvas = document.getElementById("view");
const { renderer, scene, camera, resize } = makeScene(canvas);

const viewer = { ready: false, errors, duration: 0, time: 0, playing: false, muted: false };
window.viewer = viewer;
const params = new URLSearchParams(window.location.search);
const modelUrl = params.get("model");
const audio = new Audio();
let mixer = null;

function frameCamera(object) {
  frameSphere(camera, new THREE.Box3().setFromObject(object).getBoundingSphere(new THREE.Sphere()));
}

function draw(time) {
  viewer.time = Math.min(Math.max(time, 0), viewer.duration);
  if (mixer) mixer.setTime(viewer.time);
  renderer.render(scene, camera);
  document.getElementById("clock").textContent = `${viewer.time.toFixed(2)} s`;
  document.getElementById("time").value = String(viewer.time / Math.max(viewer.duration, 1e-9));
}

viewer.seek = (time) => {
  audio.currentTime = time;
  draw(time);
  return viewer.time;
};

function loop() {
  viewer.playing = !audio.paused;
  if (!audio.paused) draw(audio.currentTime);
  requestAnimationFrame(loop);
}

async function autoplay() {
  // Browsers may refuse sound before a click; muted playback is always allowed.
  try {
    await audio.play();
  } catch (error) {
    if (error.name !== "NotAllowedError") throw error;
    audio.muted = viewer.muted = true;
    document.getElementById("play").textContent = "unmute";
    await audio.play();
  }
}

function startTime() {
  const value = params.get("t");
  if (value === null) return 0;
  const time = Number(value);
  if (!Number.isFinite(time) || time < 0) throw new Error(`?t=${value}: not a time in seconds`);
  return time;
}

async function start() {
  if (!modelUrl) throw new Error("no model: open this page with ?model=FILE.glb");
  const gltf = await new GLTFLoader().loadAsync(modelUrl);
  scene.add(gltf.scene);
  frameCamera(gltf.scene);
  const clip = gltf.animations[0];
  if (!clip) throw new Error(`${modelUrl} has no animation`);
  mixer = new THREE.AnimationMixer(gltf.scene);
  // Once, held at its last frame: at the clip's end the face must not jump back to frame 0.
  mixer.clipAction(clip).setLoop(THREE.LoopOnce, 1).play().clampWhenFinished = true;
  viewer.duration = clip.duration;
  const extras = gltf.asset.extras || {};
  viewer.extras = extras;
  const audioName = params.get("audio") || extras.audio;
  if (audioName) audio.src = new URL(audioName, new URL(modelUrl, window.location.href)).href;
  const play = document.getElementById("play");
  play.disabled = !audioName;
  play.onclick = () => {
    if (audio.muted) {
      audio.muted = viewer.muted = false;
      if (audio.paused) audio.play().catch(report);
      else play.textContent = "pause";
    } else if (audio.paused) audio.play().catch(report);
    else audio.pause();
  };
  audio.onplay = () => (play.textContent = audio.muted ? "unmute" : "pause");
  audio.onpause = () => (play.textContent = "play");
  document.getElementById("time").oninput = (event) =>
    viewer.seek(Number(event.target.value) * viewer.duration);
  resize();
  window.addEventListener("resize", () => { resize(); draw(viewer.time); });
  viewer.seek(Math.min(startTime(), viewer.duration));
  if (params.get("autoplay") === "1") {
    if (!audioName) throw new Error("?autoplay=1 needs the audio (?audio=FILE.wav or the file's extras)");
    await autoplay();
  }
  viewer.ready = true;
  loop();
}

start().catch(report);
