// Webcam capture: a live <video>, and one frame of it as a JPEG file.

import { ApiError } from "./api.js";

function cameraError(error) {
  const denied = error.name === "NotAllowedError" || error.name === "SecurityError";
  return new ApiError(denied ? "camera_denied" : "camera_failed", 0, { detail: error.message });
}

export async function startCamera(video) {
  if (!navigator.mediaDevices?.getUserMedia) throw new ApiError("camera_unavailable", 0);
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: "user", width: { ideal: 1280 }, height: { ideal: 960 } },
      audio: false,
    });
    await video.play();
  } catch (error) {
    stopCamera(video);
    throw cameraError(error);
  }
}

export function stopCamera(video) {
  for (const track of video.srcObject?.getTracks() || []) track.stop();
  video.srcObject = null;
}

export function captureFrame(video) {
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve, reject) => {
    canvas.toBlob(
      (blob) => {
        if (blob) resolve(new File([blob], "camera.jpg", { type: "image/jpeg" }));
        else reject(new ApiError("camera_failed", 0, { detail: "no frame was captured" }));
      },
      "image/jpeg",
      0.92,
    );
  });
}
