// What the viewer page and the live page share: the error line, the scene with its lights, the
// canvas's size, and a fixed frontal camera on a bounding sphere, as the project's videos use.
import * as THREE from "three";

export function errorReporter(errors) {
  const report = (message) => {
    errors.push(String(message));
    document.getElementById("errors").textContent = errors.join("; ");
  };
  window.addEventListener("error", (event) => report(event.message));
  window.addEventListener("unhandledrejection", (event) => report(event.reason));
  return report;
}

export function makeScene(canvas) {
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0x202226);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x404050, 0.6));
  const key = new THREE.DirectionalLight(0xffffff, 2.6);
  key.position.set(0.6, 0.7, 1.0);
  scene.add(key);
  const camera = new THREE.PerspectiveCamera(25, 1, 0.01, 100);
  const resize = () => {
    const { clientWidth: width, clientHeight: height } = canvas;
    renderer.setSize(width, height, false);
    camera.aspect = width / Math.max(height, 1);
    camera.updateProjectionMatrix();
  };
  return { renderer, scene, camera, resize };
}

export function frameSphere(camera, sphere) {
  const distance = (sphere.radius * 1.15) / Math.tan(THREE.MathUtils.degToRad(25 / 2));
  camera.position.copy(sphere.center).add(new THREE.Vector3(0, 0, distance));
  camera.near = distance / 20;
  camera.far = distance * 20;
  camera.lookAt(sphere.center);
  camera.updateProjectionMatrix();
}
